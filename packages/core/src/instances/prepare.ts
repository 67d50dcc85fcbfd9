/**
 * `hm.images.prepare(image, shape)`: the boot template of a machine shape made ahead of time, so
 * that the first create of the shape restores it too. It is made the way a first create makes it:
 * an instance of the shape boots (its template made on the way), runs `true`, and is deleted.
 */
import { randomBytes } from 'node:crypto'
import { NotSupportedError } from '@hypeman-ts/common'
import { waitForStatusEvent } from '../guest/index.js'
import type { Template } from '../templates/store.js'
import type { InstanceContext } from './context.js'
import { createInstance } from './create.js'
import { deleteInstance } from './lifecycle.js'
import type { CreateInstanceParams } from './params.js'

/** The parts of a create that make its machine shape (templates/store.ts): not the program, env or identity. */
export type TemplateShape = Pick<CreateInstanceParams, 'size' | 'overlaySize' | 'vcpus' | 'hypervisor' | 'platform' | 'skipGuestAgent' | 'skipKernelHeaders' | 'diskIoBps' | 'network'>

export async function prepareTemplate(cx: InstanceContext, image: string, shape: TemplateShape = {}, signal?: AbortSignal): Promise<Template> {
  const store = cx.opts.templates
  if (!store) throw new NotSupportedError('templates: this manager was opened with templates: false', { field: 'templates' })
  const name = `template-${randomBytes(4).toString('hex')}`
  const inst = await createInstance(cx, { ...shape, image, name, cmd: ['true'] }, { ...(signal ? { signal } : {}), waitForRunning: false })
  try {
    const record = await cx.files.read(inst.id)
    const made = record?.template ? await store.get(record.template) : undefined
    if (!made) throw new NotSupportedError('this shape boots cold: no template is made for it (see the README, "Boot templates")', { field: 'shape' })
    // Its program ends before it goes: the shape's warm VMM is spawned once that shows in its
    // status log, and a deleted log would hold the spawn back until the boot timeout.
    await waitForStatusEvent(cx.files.paths(inst.id).statusLog, ['exited', 'error'], { since: record!.statusMark, timeoutMs: cx.bootTimeoutMs, ...(signal ? { signal } : {}) }).catch((err: unknown) => {
      if (signal?.aborted) throw err
    })
    return made
  } finally {
    await deleteInstance(cx, inst.id)
  }
}
