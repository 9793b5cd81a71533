"""The bridge: provider webhooks in, flat job events out to Make, n8n and Zapier."""

__version__ = "0.1.0"
