from firmware_sim.cli import main

main()
