from batch_enricher.cli import main

main()
