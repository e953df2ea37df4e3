/*
 * A SQLite extension that turns off the checkpoint SQLite runs when the
 * last connection to a WAL database closes (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
 * which better-sqlite3 does not expose). Loaded by FolioFs.close only after
 * a sync of the WAL failed (FileData.walFailure): the checkpoint would copy
 * frames whose write to disk failed into the database, read back as the
 * host's cache holds them, unchecked (an evicted page reads back stale);
 * the WAL is left instead, and the next open recovers from it as after a
 * crash, checking every frame's checksum.
 * Misuse: loading it into a connection whose WAL is sound (the WAL then
 * stays beside the image until its next open).
 */
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1

int sqlite3_foliofsnockpt_init (sqlite3 *db, char **err, const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api)
  (void)err;
  int on = 0;
  int rc = sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, &on);
  if (rc == SQLITE_OK && on != 1) rc = SQLITE_ERROR;
  return rc;
}
