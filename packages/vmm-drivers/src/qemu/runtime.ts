/** The files a QEMU VM has in its runtime dir, and their removal once the process is gone. */
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { VmSpec } from '../types.js'
import { qemuOptValue, RUNTIME_FILES } from './argv.js'

export function qmpSocketPath(runtimeDir: string): string {
  return join(runtimeDir, RUNTIME_FILES.qmp)
}

export function pidFilePath(runtimeDir: string): string {
  return join(runtimeDir, RUNTIME_FILES.pid)
}

/**
 * The argument that marks a QEMU process as the one of this runtime dir (the QMP chardev), so
 * a process that was spawned but never recorded can still be found and ended after a crash.
 */
export function processMark(runtimeDir: string): string {
  return `path=${qemuOptValue(qmpSocketPath(runtimeDir))},server=on`
}

/** Sockets and the pidfile: things that mean nothing once the process is gone. Logs are kept. */
export async function removeRuntimeFiles(spec: Pick<VmSpec, 'runtimeDir' | 'channels'>): Promise<void> {
  const paths = [qmpSocketPath(spec.runtimeDir), pidFilePath(spec.runtimeDir), join(spec.runtimeDir, RUNTIME_FILES.migrate)]
  for (const ch of spec.channels ?? []) if (ch.backend.kind === 'socket') paths.push(ch.backend.path)
  await Promise.all(paths.map((p) => rm(p, { force: true })))
}
