"""The checks, one module per property they verify; import them from ``nnsanity``.

Every module holds one ``measure_*`` (returns a frozen result with ``.passed``) and its
``assert_*`` (the measurement plus a raise). No check imports another: what they share lives in
the private ``nnsanity._*`` modules, so each module reads as the measurement alone.
"""
