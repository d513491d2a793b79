"""Classification tasks (image, EEG) that run on the same optimized training loop as the speaker task."""
