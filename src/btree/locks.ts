// Node locks (six-lock model, cf. bcachefs six.c / btree_locking.c):
//   read   - shared; excludes write
//   intent - one holder; compatible with read; required before write
//   write  - held only by the intent holder; excludes other readers
// Locks are only ever *tried*: a transaction never waits for a lock while
// holding others (that would need an await with locks held), it restarts.

export type LockType = 'read' | 'intent' | 'write'

export interface LockOwner { readonly id: number }

export class NodeLock {
  readers = new Map<LockOwner, number>()
  intent: LockOwner | null = null
  intentCount = 0
  write: LockOwner | null = null

  /** true if owner could take this lock type right now */
  canLock (owner: LockOwner, type: LockType): boolean {
    switch (type) {
      case 'read':
        return this.write === null || this.write === owner
      case 'intent':
        return this.intent === null || this.intent === owner
      case 'write':
        if (this.intent !== owner) return false
        for (const r of this.readers.keys()) if (r !== owner) return false
        return true
    }
  }

  trylock (owner: LockOwner, type: LockType): boolean {
    if (!this.canLock(owner, type)) return false
    switch (type) {
      case 'read':
        this.readers.set(owner, (this.readers.get(owner) ?? 0) + 1)
        break
      case 'intent':
        this.intent = owner
        this.intentCount++
        break
      case 'write':
        this.write = owner
        break
    }
    return true
  }

  unlock (owner: LockOwner, type: LockType): void {
    switch (type) {
      case 'read': {
        const n = (this.readers.get(owner) ?? 0) - 1
        if (n < 0) throw new Error('read unlock without lock')
        if (n === 0) this.readers.delete(owner)
        else this.readers.set(owner, n)
        break
      }
      case 'intent':
        if (this.intent !== owner) throw new Error('intent unlock without lock')
        if (--this.intentCount === 0) this.intent = null
        break
      case 'write':
        if (this.write !== owner) throw new Error('write unlock without lock')
        this.write = null
        break
    }
  }

  held (): boolean {
    return this.readers.size > 0 || this.intent !== null || this.write !== null
  }
}
