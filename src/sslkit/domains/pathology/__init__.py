"""Whole-slide pathology: slides read by microns, tissue-aware tiling, DINO/SimCLR tile encoders, tile and slide
embeddings, attention MIL."""
