"""chatmaild: the small daemons a chatmail relay runs beside Postfix and Dovecot."""

__version__ = "0.1.0"
