from lorasynth.cli import main

main()
