"""Capstan's built-in LLM fine-tuning template (SPEC 3.5) and the project's own tiny base model.

Self-contained: it imports torch, transformers, peft and tokenizers only, never the platform's
``capstan_*`` packages, because it runs inside a task's sandbox (``python -m capstan_finetune``).
"""
