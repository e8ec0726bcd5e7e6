"""
Helpers shared by the chatmail execution modules.

Salt syncs this file from ``salt://_utils`` (``saltutil.sync_all``,
``saltutil.sync_utils``; salt-ssh ships it with the other custom modules) and
hands its functions to every execution module as
``__utils__["chatmail_util.<function>"]``.
"""

__virtualname__ = "chatmail_util"


def __virtual__():
    return __virtualname__


def pillar_get(salt_funcs, key, default):
    """
    A pillar value (``key`` colon-separated) as default for a module argument.

    ``salt_funcs`` is the calling module's ``__salt__``.  Salt 3008 masks
    pillar values handed to modules ("**********") unless asked to unmask;
    older salt has no ``unmask`` argument and does not mask.  Without a
    ``pillar.get`` (a module used outside a minion) the default is returned.
    """
    try:
        get = salt_funcs["pillar.get"]
    except (KeyError, TypeError):
        return default
    try:
        return get(key, default, unmask=True)
    except TypeError:
        return get(key, default)
