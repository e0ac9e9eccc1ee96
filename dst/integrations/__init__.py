"""The engine inside training loops users already run: ``dst.integrations.lightning`` (a
Lightning ``Callback``) and ``dst.integrations.hf`` (a Hugging Face ``TrainerCallback``). Each
module imports its library; install them with ``pip install "dst[integrations]"``."""
