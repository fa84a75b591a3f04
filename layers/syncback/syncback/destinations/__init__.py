"""Destination API clients: one package per API, each registered in ``registry``, all behind
``base.Destination``. Import ``catalog`` to load them; nothing else names one."""
