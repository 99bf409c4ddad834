"""mkv: minikeyvalue in Python — a LevelDB-indexed blob store on stock nginx volumes."""
