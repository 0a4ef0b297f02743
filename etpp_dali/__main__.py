"""``python -m etpp_dali`` is ``etpp`` (what ``torchrun -m etpp_dali train`` runs)."""

from .cli import main

main()
