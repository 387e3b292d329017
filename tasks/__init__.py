"""Everything below the flows: stages, text primitives, the runtime that runs stages, storage I/O, and ops."""
