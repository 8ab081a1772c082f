"""``python -m firmware_sim.scenario --seed 7 --out DIR``."""

from firmware_sim.scenario.cli import main

main()
