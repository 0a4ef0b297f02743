"""The named training recipes (``etpp train --recipe NAME``), installed as ``etpp_dali.recipes``."""
