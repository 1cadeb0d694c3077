"""medical3d: self-supervised pretraining on CT/MRI volumes (Alice-style, SwinUNETR-SSL) and few-label fine-tuning."""
