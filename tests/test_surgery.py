"""Surgery's search for the rewrites a removal reaches through virtual slots."""
from __future__ import annotations

from graphprune.surgery import _owner_prefixes


def test_a_virtual_slot_names_its_node_even_when_name_and_tag_hold_slashes():
    # "~<node>/<tag>": TorchScript node names start with and contain "/", a plugin's tag may too
    assert "/m/conv/Conv" in _owner_prefixes("~/m/conv/Conv/groups")
    assert "/m/conv/Conv" in _owner_prefixes("~/m/conv/Conv/my/tag")
    assert "conv" in _owner_prefixes("~conv/in_pos")
    assert "conv/in_pos" not in _owner_prefixes("~conv/in_pos")  # the tag is never taken for a name
