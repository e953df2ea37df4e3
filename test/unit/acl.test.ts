import { test } from 'node:test'
import assert from 'node:assert/strict'
import { aclModeBits, encodeAcl, inherit, modeOnly, parseAcl, withMode, type AclEntry } from '../../src/acl'

const U = 0xffffffff
// user::rwx user:65534:rw- group::r-x mask::rwx other::r--
const named: AclEntry[] = [{ tag: 1, perm: 7, id: U }, { tag: 2, perm: 6, id: 65534 }, { tag: 4, perm: 5, id: U }, { tag: 0x10, perm: 7, id: U }, { tag: 0x20, perm: 4, id: U }]

test('acl: encode/parse round trip, invalid ACLs refused', () => {
  assert.deepEqual(parseAcl(encodeAcl(named)), named)
  assert.equal(parseAcl(Buffer.alloc(3)), null)
  assert.equal(parseAcl(encodeAcl(named.filter(e => e.tag !== 0x10))), null, 'named entry without a mask')
  assert.equal(parseAcl(encodeAcl(named.filter(e => e.tag !== 1))), null, 'no USER_OBJ')
  assert.equal(parseAcl(encodeAcl([...named.slice(0, 4), { tag: 0x20, perm: 9, id: U }])), null, 'bad perm')
})

test('acl: mode bits take the mask, and chmod rewrites owner, mask and other', () => {
  assert.equal(aclModeBits(named), 0o774)
  const c = withMode(named, 0o640)
  assert.deepEqual(c.map(e => e.perm), [6, 6, 5, 4, 0]) // named user and group entry untouched, mask = 4
  assert.equal(aclModeBits(c), 0o640)
  assert.equal(modeOnly(named), false)
  assert.equal(modeOnly(named.filter(e => e.tag !== 2)), false, 'a mask alone says more than the mode (posix_acl_equiv_mode)')
  assert.equal(modeOnly(named.filter(e => e.tag !== 2 && e.tag !== 0x10)), true, 'owner, group and other only')
})

test('acl: inheritance masks the default ACL by the create mode', () => {
  const r = inherit(named, 0o100666)
  assert.equal(r.mode, 0o100664) // owner rw (6 & 7), group class rw (mask 7 & 6), other r (4 & 6)
  assert.deepEqual(parseAcl(r.access!)!.map(e => e.perm), [6, 6, 5, 6, 4])
  const plain = inherit(named.filter(e => e.tag !== 2 && e.tag !== 0x10), 0o40755)
  assert.equal(plain.access, null)
  assert.equal(plain.mode, 0o40754) // owner rwx, group r-x, other r--
  // a mask without named entries is inherited: the group keeps its own
  // entry (r-x), the mode's group bits show the masked mask (rwx & 5)
  const masked = inherit(named.filter(e => e.tag !== 2), 0o100666)
  assert.deepEqual(parseAcl(masked.access!)!.map(e => e.perm), [6, 5, 6, 4])
  assert.equal(masked.mode, 0o100664)
})
