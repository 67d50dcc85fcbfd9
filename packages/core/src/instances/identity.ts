/**
 * A guest that goes on from a snapshot shared with others (a template's, a fork's source's) is
 * told to become itself over the control port, with the host's clock and fresh randomness:
 *
 *   go <unix-ms> <hex>        a template boot waiting at its template point (guest README)
 *   identity <unix-ms> <hex>  a restored fork: reseed, then its own config disk (MAC, address,
 *                             hostname, machine-id, env of new processes)
 *
 * Until the word is sent the record says so (`awaitingGo`, `reidentify`): a host process that dies
 * in between leaves it for the next open's reconcile to send.
 */
import { randomBytes } from 'node:crypto'
import { sendControlCommand } from '../guest/index.js'
import { GuestError } from '../guest/errors.js'
import type { InstanceContext } from './context.js'
import type { InstanceRecord } from './record.js'

const TIMEOUT_MS = 10_000
const ENTROPY_BYTES = 32

async function sendSeeded(cx: InstanceContext, record: InstanceRecord, command: 'go' | 'identity', signal?: AbortSignal): Promise<void> {
  const reply = await sendControlCommand(cx.files.paths(record.id).controlSocket, `${command} ${Date.now()} ${randomBytes(ENTROPY_BYTES).toString('hex')}`, {
    timeoutMs: TIMEOUT_MS,
    ...(signal ? { signal } : {}),
  })
  if (reply !== 'ok') throw new GuestError('control_refused', `the guest answered "${reply}" to ${command}`)
}

export async function sendGo(cx: InstanceContext, record: InstanceRecord, signal?: AbortSignal): Promise<void> {
  await sendSeeded(cx, record, 'go', signal)
  delete record.awaitingGo
  await cx.files.write(record)
}

export async function sendIdentity(cx: InstanceContext, record: InstanceRecord, signal?: AbortSignal): Promise<void> {
  await sendSeeded(cx, record, 'identity', signal)
  delete record.reidentify
  await cx.files.write(record)
  await cx.files.log(record.id, 'identity: reseeded, its own MAC, address, hostname and machine-id')
}
