// POSIX ACLs (system.posix_acl_access / system.posix_acl_default). With
// FUSE_CAP_POSIX_ACL the kernel enforces ACLs (it reads them through
// getxattr and caches them) and the daemon only stores them, as the
// xattrs rows of those names, in the kernel's xattr format:
//   u32 version (2), then entries { u16 tag, u16 perm, u32 id }, sorted by
//   tag then id (the kernel sorts and validates before it sends one).
// What the daemon owes the kernel (libfuse's contract for POSIX_ACL):
// * the mode and the access ACL agree: setting an access ACL sets the
//   mode's rwx bits from it (owner from USER_OBJ, group from MASK if there
//   is one else GROUP_OBJ, other from OTHER); an ACL of only those three
//   (no mask, no named user or group) is not stored (modeOnly), as ext4
//   does; chmod rewrites
//   those three entries of a stored ACL (withMode);
// * inheritance (inherit): a new inode in a directory with a default ACL
//   gets that ACL as its access ACL, masked by the mode it was created
//   with (and no umask); a new directory also gets it as its default
//   ACL. Without a default ACL the umask applies (the binding asks the
//   kernel not to apply it: FUSE_CAP_DONT_MASK).
// Misuse: these are pure functions of bytes; callers store the result in
// the same transaction as the mode they computed with it.

export const ACL_ACCESS = 'system.posix_acl_access'
export const ACL_DEFAULT = 'system.posix_acl_default'
export const isAclName = (name: string): boolean => name === ACL_ACCESS || name === ACL_DEFAULT

const VERSION = 2
const USER_OBJ = 0x01
const USER = 0x02
const GROUP_OBJ = 0x04
const GROUP = 0x08
const MASK = 0x10
const OTHER = 0x20
const UNDEFINED_ID = 0xffffffff

export interface AclEntry { tag: number, perm: number, id: number }

/** parse and validate (null: not a valid ACL; the caller answers EINVAL) */
export function parseAcl (v: Buffer): AclEntry[] | null {
  if (v.length < 4 || (v.length - 4) % 8 !== 0 || v.readUInt32LE(0) !== VERSION) return null
  const out: AclEntry[] = []
  for (let o = 4; o < v.length; o += 8) out.push({ tag: v.readUInt16LE(o), perm: v.readUInt16LE(o + 2), id: v.readUInt32LE(o + 4) })
  const count = (t: number): number => out.filter(e => e.tag === t).length
  if (count(USER_OBJ) !== 1 || count(GROUP_OBJ) !== 1 || count(OTHER) !== 1 || count(MASK) > 1) return null
  if (out.some(e => (e.perm & ~7) !== 0 || ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].includes(e.tag))) return null
  if ((count(USER) + count(GROUP)) > 0 && count(MASK) === 0) return null // named entries need a mask
  return out
}

export function encodeAcl (entries: AclEntry[]): Buffer {
  const b = Buffer.alloc(4 + 8 * entries.length)
  b.writeUInt32LE(VERSION, 0)
  entries.forEach((e, k) => {
    b.writeUInt16LE(e.tag, 4 + 8 * k)
    b.writeUInt16LE(e.perm, 6 + 8 * k)
    b.writeUInt32LE(e.id >>> 0, 8 + 8 * k)
  })
  return b
}

const find = (acl: AclEntry[], tag: number): AclEntry | undefined => acl.find(e => e.tag === tag)

/** the rwx bits (0o777) an access ACL gives the mode */
export function aclModeBits (acl: AclEntry[]): number {
  const group = find(acl, MASK) ?? find(acl, GROUP_OBJ)!
  return (find(acl, USER_OBJ)!.perm << 6) | (group.perm << 3) | find(acl, OTHER)!.perm
}

/**
 * the ACL says nothing the mode does not: only the owner, group and
 * other entries (the kernel's posix_acl_equiv_mode). A mask alone says
 * more: the mode's group bits show the mask, and the group's own entry
 * stays what the group gets (limited by the mask). Dropping such an ACL
 * gave the owning group the mask's permissions.
 */
export const modeOnly = (acl: AclEntry[]): boolean => acl.every(e => e.tag === USER_OBJ || e.tag === GROUP_OBJ || e.tag === OTHER)

/** chmod: the access ACL with its owner, group-class (mask, else group) and other entries from mode */
export function withMode (acl: AclEntry[], mode: number): AclEntry[] {
  const groupTag = find(acl, MASK) ? MASK : GROUP_OBJ
  return acl.map(e => {
    if (e.tag === USER_OBJ) return { ...e, perm: (mode >> 6) & 7 }
    if (e.tag === groupTag) return { ...e, perm: (mode >> 3) & 7 }
    if (e.tag === OTHER) return { ...e, perm: mode & 7 }
    return e
  })
}

/**
 * posix_acl_create: a new inode under a directory whose default ACL is
 * `def` gets access ACL = def masked by the requested mode (owner, the
 * group class and other each keep only what mode allows), and the mode
 * bits that ACL gives. access is null when it says no more than the mode.
 */
export function inherit (def: AclEntry[], mode: number): { access: Buffer | null, mode: number } {
  const acl = def.map(e => {
    if (e.tag === USER_OBJ) return { ...e, perm: e.perm & (mode >> 6) & 7 }
    if (e.tag === OTHER) return { ...e, perm: e.perm & mode & 7 }
    return { ...e }
  })
  const groupClass = find(acl, MASK) ?? find(acl, GROUP_OBJ)!
  groupClass.perm &= (mode >> 3) & 7
  const bits = aclModeBits(acl)
  return { access: modeOnly(acl) ? null : encodeAcl(acl), mode: (mode & ~0o777) | bits }
}

export { UNDEFINED_ID }
