"""Progress: what a run reports on the way. The verbs print it, the API and the candidate
search's trial runs log it; its own module so that the search (which run_prune calls) and
run_prune both use it without importing each other."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Progress:
    """What a run reports on the way (default: nothing); verbs print or log it."""

    def oracle(self, res, shapes) -> None:
        pass

    def repair(self, report: dict) -> None:  # one repair pass's error before/after (logged, the verbs print it)
        from graphprune.workflow.verdicts import repair_line

        log.info("%s", repair_line(report))

    def rotation(self, res) -> None:  # slice-hidden: the rotated input checked against the input
        pass

    def vocabulary(self, record: dict, res) -> None:  # slice-vocab: the record, its oracle (None: not run)
        pass

    def sparsity(self, res: dict) -> None:
        pass

    def fidelity(self, fid: dict, max_drop: float) -> None:
        pass

    def candidate(self, k: int, n: int, row: dict, eta: float) -> None:
        pass

    @staticmethod
    def candidate_line(k: int, n: int, row: dict, eta: float) -> str:
        """One line per candidate the search has scored, as the verbs show it."""
        return (f"search {k}/{n}: {row['name']}: score {row['score']:.4f}, kept MACs {row['kept_macs']:.3f} "
                f"({row['seconds']:.0f} s" + (f", ETA {eta:.0f} s)" if k < n else ")"))

    def note(self, text: str) -> None:  # something the user should know about the result
        log.info("%s", text)
