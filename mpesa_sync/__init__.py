"""mpesa-sync keeps ``bars.mpesa_enabled`` in step with ``mpesa_credentials``.

The work happens in PostgreSQL triggers installed by :func:`migrate`; this
package installs them, reconciles drift and relays status notifications.
"""

__version__ = "0.1.0"

from mpesa_sync.credentials import save_settings
from mpesa_sync.errors import MpesaSyncError
from mpesa_sync.migrations import migrate, rollback

__all__ = ["MpesaSyncError", "__version__", "migrate", "rollback", "save_settings"]
