/**
 * /volumes (create, from-archive, list, get, delete) and /instances/{id}/volumes/{volumeId}
 * (attach, detach: core does these for a Stopped instance, and for a Running one by hot-plug; a
 * busy mount is `volume_busy`, a wrong state `invalid_state`, both 409). Sizes are in GB, 1024-based as
 * everywhere in this API. The archive of from-archive is the raw `application/gzip` body,
 * streamed into core's safe unpack, which stops at `size_gb`.
 */
import type { Readable } from 'node:stream'
import { ValidationError } from '@hypeman-ts/common'
import { instanceToWire, volumeToWire } from '@hypeman-ts/core'
import { body, params, query, type Handlers, type RouteContext } from './types.js'

const gb = (n: unknown) => `${n as number}GB`
const optional = <T>(key: string, v: T | undefined) => (v === undefined ? {} : { [key]: v })

export function volumeHandlers({ hm }: RouteContext): Handlers {
  return {
    async listVolumes(req) {
      const tags = query(req).tags as Record<string, string> | undefined
      return (await hm.volumes.list(tags ? { tags } : {})).map(volumeToWire)
    },
    async createVolume(req, reply) {
      const b = body(req)
      const volume = await hm.volumes.create({
        name: b.name as string,
        size: gb(b.size_gb),
        ...optional('tags', b.tags as Record<string, string> | undefined),
        ...optional('id', b.id as string | undefined),
      })
      return reply.code(201).send(volumeToWire(volume))
    },
    async createVolumeFromArchive(req, reply) {
      const q = query(req)
      const archive = req.body as Readable | undefined
      if (!archive || typeof (archive as Readable).pipe !== 'function') throw new ValidationError('body', 'must be a tar.gz archive sent as application/gzip')
      const volume = await hm.volumes.createFromArchive(
        {
          name: q.name as string,
          sizeLimit: gb(q.size_gb),
          ...optional('tags', q.tags as Record<string, string> | undefined),
          ...optional('id', q.id as string | undefined),
        },
        archive,
      )
      return reply.code(201).send(volumeToWire(volume))
    },
    async getVolume(req) {
      return volumeToWire(await hm.volumes.get(params(req).id!))
    },
    async deleteVolume(req, reply) {
      await hm.volumes.delete(params(req).id!)
      return reply.code(204).send()
    },
    async attachVolume(req) {
      const b = body(req)
      const inst = await hm.instances.attachVolume(params(req).id!, params(req).volumeId!, {
        mountPath: b.mount_path as string,
        ...optional('readonly', b.readonly as boolean | undefined),
      })
      return instanceToWire(inst)
    },
    async detachVolume(req) {
      return instanceToWire(await hm.instances.detachVolume(params(req).id!, params(req).volumeId!))
    },
  }
}
