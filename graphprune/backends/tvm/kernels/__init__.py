"""graphprune's own TVM kernels (sparse / pattern), part of the TVM adapter layer.

Together with ``adapter.py`` these are the only modules that import ``tvm``; like the
adapter they import it inside functions, so importing graphprune never imports TVM.
"""
