"""Bridges to other libraries (supervision, ...), each imported only when its conversion is asked for.

Nothing here is imported by ``fastinst_rt`` itself: the runtime needs none of these packages.
"""
