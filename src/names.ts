// File names are bytes, as in every Linux filesystem.
//
// Inside the daemon a name, a path or a symlink target is a *byte string*:
// a JS string whose code units are its bytes (0..255, latin1), exactly as
// the kernel sent them (the binding passes paths that way, and reads names
// and targets back the same way). Lengths are byte counts (NAME_MAX,
// PATH_MAX), '/' is 0x2f, and a name that is not valid UTF-8 (`bad\xff`)
// stays itself: it never turns into U+FFFD and collides with `bad\xfe`.
//
// On disk (dirents.name) the format is unchanged for every valid UTF-8 name:
// SQLite TEXT. A name that is not valid UTF-8 is stored as a BLOB of its
// bytes. TEXT and BLOB values never compare equal in SQLite, and no valid
// UTF-8 name has the bytes of an invalid one, so the two kinds cannot
// collide; UNIQUE(parent, name) holds across both.
//
// Misuse: passing an ordinary (UTF-16) JS string with characters above
// U+00FF where a byte string is expected silently keeps only the low byte
// of each: convert user-facing text with fromText() first.

// ignoreBOM: a leading U+FEFF is part of the name (by default the decoder
// drops it: `\xef\xbb\xbfabc` was the entry `abc`, and one of just those bytes empty)
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
const ASCII = /^[\x00-\x7f]*$/

/** the dirents.name value of a byte-string name */
export function nameToDb (name: string): string | Buffer {
  if (ASCII.test(name)) return name
  const bytes = Buffer.from(name, 'latin1')
  try {
    return utf8.decode(bytes)
  } catch {
    return bytes
  }
}

/** the byte string of a dirents.name value (TEXT or BLOB) */
export function nameFromDb (v: string | Buffer): string {
  if (typeof v !== 'string') return v.toString('latin1')
  return ASCII.test(v) ? v : Buffer.from(v, 'utf8').toString('latin1')
}

/** the byte string of ordinary text (UTF-8 encoded), e.g. a name typed by a user */
export function fromText (s: string): string {
  return ASCII.test(s) ? s : Buffer.from(s, 'utf8').toString('latin1')
}
