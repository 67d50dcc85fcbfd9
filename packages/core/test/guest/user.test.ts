// The guest init's user resolution (docker --user semantics, as runc implements them), run on the
// host through the init binary's `resolve-user` entry point against a made-up image root.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { guestInitBinary } from './helpers.js'

let root: string
let bare: string
let init: string
beforeAll(async () => {
  init = await guestInitBinary()
  root = await mkdtemp(join(tmpdir(), 'hm-user-'))
  await mkdir(join(root, 'etc'))
  await writeFile(join(root, 'etc/passwd'), [
    'root:x:0:0:root:/root:/bin/sh',
    'app:x:1000:1000:App:/home/app:/bin/sh',
    'svc:x:1001:1001::/srv:/bin/false',
    'nohome:x:1002:1002:::/bin/sh',
    'broken line',
    '',
  ].join('\n'))
  await writeFile(join(root, 'etc/group'), [
    'root:x:0:',
    'wheel:x:10:root,app',
    'app:x:1000:',
    'staff:x:50:app,svc',
    'svc:x:1001:',
    'docker:x:999:svc',
    '',
  ].join('\n'))
  bare = await mkdtemp(join(tmpdir(), 'hm-user-bare-'))
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
  await rm(bare, { recursive: true, force: true })
})

const resolve = async (spec: string, r = root) => (await run(init, ['resolve-user', r, spec])).stdout.trim()

describe('user resolution (docker run --user)', () => {
  it.each<[string, string]>([
    ['', 'uid=0 gid=0 home=/root groups=10'],
    ['root', 'uid=0 gid=0 home=/root groups=10'],
    ['app', 'uid=1000 gid=1000 home=/home/app groups=10,50'],
    ['1000', 'uid=1000 gid=1000 home=/home/app groups=10,50'],
    ['svc', 'uid=1001 gid=1001 home=/srv groups=50,999'],
    ['app:staff', 'uid=1000 gid=50 home=/home/app groups='],
    ['app:50', 'uid=1000 gid=50 home=/home/app groups='],
    ['app:4242', 'uid=1000 gid=4242 home=/home/app groups='],
    ['4242', 'uid=4242 gid=0 home=/ groups='],
    ['4242:4343', 'uid=4242 gid=4343 home=/ groups='],
    ['4242:staff', 'uid=4242 gid=50 home=/ groups='],
    ['nohome', 'uid=1002 gid=1002 home=/ groups='],
  ])('%j → %s', async (spec, expected) => {
    expect(await resolve(spec)).toBe(expected)
  })

  it.each<[string, RegExp]>([
    ['nobody-here', /unable to find user nobody-here: no matching entries in passwd file/],
    ['app:nogroup', /unable to find group nogroup: no matching entries in group file/],
  ])('refuses %j like runc', async (spec, message) => {
    await expect(resolve(spec)).rejects.toThrowError(message)
  })

  it('runs numeric users in an image without /etc/passwd, and refuses names there', async () => {
    expect(await resolve('', bare)).toBe('uid=0 gid=0 home=/ groups=')
    expect(await resolve('123:456', bare)).toBe('uid=123 gid=456 home=/ groups=')
    await expect(resolve('app', bare)).rejects.toThrowError(/unable to find user app/)
  })
})
