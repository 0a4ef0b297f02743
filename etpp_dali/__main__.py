"""``python -m etpp_dali`` is ``etpp`` (what ``torchrun -m etpp_dali train`` runs)."""

from etpp_dali.cli import main

main()
