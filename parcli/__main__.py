from parcli.entry import main

main()
