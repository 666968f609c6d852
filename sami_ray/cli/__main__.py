import os

from .app import main

if __name__ == "__main__":  # vLLM's CPU platform spawns processes: the import must not re-run the command
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
