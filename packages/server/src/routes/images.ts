/** GET/POST /images, GET/DELETE /images/{name} (the name arrives %2F-encoded and decoded by the router). */
import { imageToWire } from '@hypeman-ts/core'
import { createImageFromWire } from '../wire.js'
import { body, params, query, type Handlers, type RouteContext } from './types.js'

export function imageHandlers({ hm, allowLocalLayouts }: RouteContext): Handlers {
  return {
    async listImages(req) {
      const tags = query(req).tags as Record<string, string> | undefined
      return (await hm.images.list(tags ? { tags } : {})).map(imageToWire)
    },
    async createImage(req, reply) {
      // Starts the pull and answers at once; the client polls GET /images/{name} for the status.
      const image = await hm.images.create(createImageFromWire(body(req), { allowLocalLayouts }))
      return reply.code(202).send(imageToWire(image))
    },
    async getImage(req) {
      return imageToWire(await hm.images.get(params(req).name!))
    },
    async deleteImage(req, reply) {
      await hm.images.delete(params(req).name!)
      return reply.code(204).send()
    },
  }
}
