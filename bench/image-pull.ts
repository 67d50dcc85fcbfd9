/**
 * bench:image-pull — cold pull + unpack + disk build of the debootstrap'ed Debian fixture from a
 * local registry, against the standard tools doing the same in the same run:
 * `skopeo copy` (registry → OCI layout) + `umoci unpack` + `mkfs.ext4 -d`.
 * Runs alternate between the two so drift in the machine hits both alike. Also measures the
 * erofs disk format, to compare disk formats on time and size.
 *
 *   npm run bench:image-pull [-- --runs 5] [-- --json]
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { run } from '@hypeman-ts/common'
import { ImageManager } from '@hypeman-ts/core'
import { pushFixtures, startRegistries } from '../packages/core/test/support/registry.js'
import { argValue, finish, median, round, say } from './lib/report.js'

const RUNS = argValue('--runs', 5)
const IMAGE = 'debian:bookworm'

async function ours(host: string, diskFormat: 'ext4' | 'erofs'): Promise<{ ms: number; size: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-pull-'))
  try {
    const m = new ImageManager({ dir, diskFormat })
    await m.init()
    const t0 = performance.now()
    const img = await m.pull(`${host}/${IMAGE}`)
    const ms = performance.now() - t0
    await m.close()
    return { ms, size: img.sizeBytes ?? 0 }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function baseline(host: string): Promise<{ ms: number; size: number; parts: Record<string, number> }> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-base-'))
  try {
    const t0 = performance.now()
    await run('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${host}/${IMAGE}`, `oci:${dir}/layout:img`])
    const t1 = performance.now()
    await run('umoci', ['unpack', '--image', `${dir}/layout:img`, `${dir}/bundle`])
    const t2 = performance.now()
    // Sized as a careful script would: du of the tree plus 20% and 16 MiB for metadata.
    const kb = Number((await run('du', ['-sk', `${dir}/bundle/rootfs`])).stdout.split('\t')[0])
    await run('mkfs.ext4', ['-q', '-F', '-O', '^has_journal', '-d', `${dir}/bundle/rootfs`, `${dir}/rootfs.ext4`, `${Math.ceil(kb * 1.2 + 16384)}k`])
    const t3 = performance.now()
    const size = Number((await run('stat', ['-c', '%s', `${dir}/rootfs.ext4`])).stdout)
    return { ms: t3 - t0, size, parts: { skopeo: t1 - t0, umoci: t2 - t1, mkfs: t3 - t2 } }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

const work = await mkdtemp(join(tmpdir(), 'bench-registry-'))
const registries = await startRegistries(work)
try {
  await pushFixtures(registries.open.host, [IMAGE])
  const host = registries.open.host
  say(`image-pull: ${IMAGE} from a local registry, ${RUNS} runs each (plus one warm-up)`)
  await ours(host, 'ext4')
  await baseline(host)
  const oursExt4: number[] = []
  const oursErofs: number[] = []
  const base: number[] = []
  const parts: Record<string, number[]> = { skopeo: [], umoci: [], mkfs: [] }
  let sizes = { ext4: 0, erofs: 0, baseline: 0 }
  for (let i = 0; i < RUNS; i++) {
    const a = await ours(host, 'ext4')
    const b = await baseline(host)
    const c = await ours(host, 'erofs')
    oursExt4.push(a.ms)
    base.push(b.ms)
    oursErofs.push(c.ms)
    for (const k of Object.keys(parts)) parts[k]!.push(b.parts[k]!)
    sizes = { ext4: a.size, erofs: c.size, baseline: b.size }
    say(`  run ${i + 1}: ours ext4 ${a.ms.toFixed(0)} ms, ours erofs ${c.ms.toFixed(0)} ms, baseline ${b.ms.toFixed(0)} ms`)
  }
  const result = {
    benchmark: 'image-pull',
    image: IMAGE,
    runs: RUNS,
    ours_ext4_ms: round(median(oursExt4), 1),
    ours_erofs_ms: round(median(oursErofs), 1),
    baseline_ms: round(median(base), 1),
    baseline_parts_ms: Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, round(median(v), 1)])),
    ratio_ext4_vs_baseline: round(median(oursExt4) / median(base)),
    ratio_erofs_vs_baseline: round(median(oursErofs) / median(base)),
    disk_bytes: sizes,
  }
  say(`median: ours (ext4) ${result.ours_ext4_ms} ms, ours (erofs) ${result.ours_erofs_ms} ms, skopeo+umoci+mkfs.ext4 ${result.baseline_ms} ms`)
  say(`ratio ours/baseline: ext4 ${result.ratio_ext4_vs_baseline}, erofs ${result.ratio_erofs_vs_baseline} (goal ≤ 1.0)`)
  say(`disk size: ext4 ${(sizes.ext4 / 2 ** 20).toFixed(1)} MiB, erofs ${(sizes.erofs / 2 ** 20).toFixed(1)} MiB, baseline ext4 ${(sizes.baseline / 2 ** 20).toFixed(1)} MiB`)
  finish(result)
} finally {
  await registries.stop()
  await rm(work, { recursive: true, force: true })
}
