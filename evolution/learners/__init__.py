"""The learners: methods that train an agent on texts or facts (full fine-tuning, LoRA merged
into the weights), beside the editors; both register in agents.methods."""
