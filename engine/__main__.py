from sangkien.cli import main

main()
