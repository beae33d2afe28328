"""What the stages leave on disk for each other: the recovered ImageFolder and stored soft labels."""
