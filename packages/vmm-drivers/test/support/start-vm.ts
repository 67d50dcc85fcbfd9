/**
 * Run as its own Node process by the attach tests: starts a VM from a spec file, then ends in a
 * way the test chooses, never stopping the VM.
 *   exit          persist the handle's record, then exit normally (without disposing)
 *   die-persisted persist the record in onSpawn, then SIGKILL ourselves before QEMU is ready
 *   die-unrecorded SIGKILL ourselves in onSpawn without persisting anything
 */
import { readFile } from 'node:fs/promises'
import { writeJsonAtomic } from '@hypeman-ts/common'
import { QemuDriver, type VmSpec } from '../../src/index.js'

const [specPath, persistPath, mode] = process.argv.slice(2) as [string, string, string]
const spec = JSON.parse(await readFile(specPath, 'utf8')) as VmSpec
const driver = new QemuDriver()
const vm = await driver.start(spec, {
  onSpawn: async (persisted) => {
    if (mode === 'die-persisted') await writeJsonAtomic(persistPath, persisted)
    if (mode.startsWith('die-')) process.kill(process.pid, 'SIGKILL')
  },
})
await writeJsonAtomic(persistPath, vm.persisted)
process.exit(0)
