"""The label fields: semantic logits, fast and slow instance embeddings."""
