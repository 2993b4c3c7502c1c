"""Label makers for training: synthetic lesions and hard negatives, silver lungs, silver slices (Qt-free)."""
