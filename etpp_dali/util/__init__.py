"""Small helpers every wing may use and that import no wing: atomic file writes, thread maps,
the torch device check, figures and lazy package exports.
"""
