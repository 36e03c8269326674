"""Training: one benchmark run, the trainer loop, teachers for distillation, data-parallel workers."""
