"""Text primitives the stages share: tokens, the normalizer, PII."""
