"""Integrations with other libraries' formats and models (bitsandbytes, peft, transformers)."""
