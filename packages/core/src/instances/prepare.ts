/**
 * `hm.images.prepare(image, shape)`: the boot template of a machine shape made ahead of time, so
 * that the first create of the shape restores it too. It is made the way a first create makes it:
 * an instance of the shape boots (its template made on the way), runs `true`, and is deleted.
 */
import { randomBytes } from 'node:crypto'
import { NotSupportedError } from '@hypeman-ts/common'
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
    const key = (await cx.files.read(inst.id))?.template
    const made = key ? await store.get(key) : undefined
    if (!made) throw new NotSupportedError('this shape boots cold: no template is made for it (see the README, "Boot templates")', { field: 'shape' })
    return made
  } finally {
    await deleteInstance(cx, inst.id)
  }
}
