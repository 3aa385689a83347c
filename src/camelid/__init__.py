"""camelid: the Alpaca / Self-Instruct / Vicuna / KoLlama2 instruction-tuning loop in one tool."""

__version__ = "0.1.0"
