"""Offscreen rasteriser for the synthetic generator (moderngl, EGL standalone context).

One render pass writes two targets: the shaded RGB image and the segmentation ids (uint8,
same pixels, so seg and colour can never disagree). Cameras follow OpenCV (x right, y down,
z forward, pinhole K in pixels, pixel centres at integer coordinates); the projection maps a
camera-frame point to the pixel that contains `K @ p` exactly as `amt.geometry.camera.project`.
Meshes stay on the GPU across frames: each object class is uploaded once, the hand is one
dynamic buffer.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np

from amt.extras import require

log = logging.getLogger(__name__)

WIDTH, HEIGHT = 640, 480
NEAR, FAR = 0.05, 5.0
MAX_HAND_VERTICES = 20000

_VERTEX = """
#version 330
uniform mat4 u_model_view;   // model -> camera (OpenCV)
uniform mat4 u_proj;         // camera (OpenCV) -> clip
in vec3 in_pos;
in vec3 in_nrm;
in vec2 in_uv;
out vec3 v_pos;
out vec3 v_nrm;
out vec2 v_uv;
void main() {
    vec4 p = u_model_view * vec4(in_pos, 1.0);
    v_pos = p.xyz;
    v_nrm = mat3(u_model_view) * in_nrm;
    v_uv = in_uv;
    gl_Position = u_proj * p;
}
"""

_FRAGMENT = """
#version 330
uniform sampler2D u_tex;
uniform bool u_use_tex;
uniform vec3 u_color;
uniform vec3 u_light_dir;     // towards the light, camera frame
uniform vec3 u_light_color;
uniform float u_ambient;
uniform float u_specular;
uniform float u_seg;          // class id / 255
in vec3 v_pos;
in vec3 v_nrm;
in vec2 v_uv;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_seg;
void main() {
    vec3 n = normalize(v_nrm);
    vec3 view = normalize(-v_pos);
    if (dot(n, view) < 0.0) n = -n;   // two-sided: meshes need not be consistently wound
    vec3 albedo = u_use_tex ? texture(u_tex, vec2(v_uv.x, 1.0 - v_uv.y)).rgb : u_color;
    float diff = max(dot(n, u_light_dir), 0.0);
    vec3 h = normalize(u_light_dir + view);
    float s1 = max(dot(n, h), 0.0);
    s1 *= s1; s1 *= s1; s1 *= s1; s1 *= s1; s1 *= s1;   // ^32 without pow()
    float spec = u_specular * s1;
    vec3 c = albedo * (u_ambient + diff * u_light_color) + spec * u_light_color;
    out_color = vec4(clamp(c, 0.0, 1.0), 1.0);
    out_seg = u_seg;
}
"""

_BG_VERTEX = """
#version 330
in vec2 in_xy;
out vec2 v_xy;
void main() { v_xy = in_xy * 0.5 + 0.5; gl_Position = vec4(in_xy, 0.999, 1.0); }
"""

# Procedural backgrounds: a colour gradient, value noise at two scales (bilinear lookups of
# a fixed random texture: far cheaper on llvmpipe than hashing per pixel), stripes, an
# optional texture crop and per-pixel sensor noise, mixed by per-frame weights.
_BG_FRAGMENT = """
#version 330
uniform vec3 u_c0;
uniform vec3 u_c1;
uniform vec3 u_c2;
uniform vec2 u_grad_dir;
uniform float u_noise_scale;
uniform float u_noise_amp;
uniform float u_stripe_freq;
uniform float u_stripe_amp;
uniform vec2 u_stripe_dir;
uniform float u_seed;
uniform sampler2D u_tex;
uniform sampler2D u_noise;
uniform float u_tex_amp;
uniform vec4 u_tex_rect;   // x0, y0, w, h in texture coordinates
in vec2 v_xy;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_seg;
void main() {
    float g = clamp(dot(v_xy - 0.5, u_grad_dir) + 0.5, 0.0, 1.0);
    vec3 c = mix(u_c0, u_c1, g);
    vec2 p = v_xy * vec2(1.3333, 1.0) * u_noise_scale / 64.0 + u_seed;
    float n = 0.65 * texture(u_noise, p).r + 0.35 * texture(u_noise, p * 4.7 + 0.37).r;
    c = mix(c, u_c2, u_noise_amp * n);
    c += u_stripe_amp * (step(0.5, fract(dot(v_xy, u_stripe_dir) * u_stripe_freq)) - 0.5);
    vec3 t = texture(u_tex, u_tex_rect.xy + v_xy * u_tex_rect.zw).rgb;
    c = mix(c, t, u_tex_amp);
    c += (texture(u_noise, gl_FragCoord.xy / 256.0 + u_seed * 7.0).g - 0.5) * 0.03;
    out_color = vec4(clamp(c, 0.0, 1.0), 1.0);
    out_seg = 0.0;
}
"""


def projection_from_K(K: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(4, 4) matrix taking OpenCV camera points to clip space for a `width` x `height` target.

    Row 0/1 reproduce u = fx x/z + cx, v = fy y/z + cy with GL pixel centres at +0.5 and the
    image rows flipped (GL's origin is bottom-left); depth maps [NEAR, FAR] to [-1, 1].
    """
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    a = (FAR + NEAR) / (FAR - NEAR)
    b = -2.0 * FAR * NEAR / (FAR - NEAR)
    return np.array(
        [
            [2 * fx / width, 2 * skew / width, 2 * (cx + 0.5) / width - 1, 0],
            [0, -2 * fy / height, 1 - 2 * (cy + 0.5) / height, 0],
            [0, 0, a, b],
            [0, 0, 1, 0],
        ]
    )


def _current(method):
    """Run a Renderer method with its own GL context current: another context created in
    the process (a second Renderer, pyrender, ...) otherwise receives the calls."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.ctx:
            return method(self, *args, **kwargs)

    return wrapper


@dataclass
class Light:
    direction: np.ndarray  # (3,) unit, towards the light, camera frame
    color: np.ndarray  # (3,)
    ambient: float
    specular: float


@dataclass
class Background:
    """Parameters of the procedural background shader (see `_BG_FRAGMENT`)."""

    colors: np.ndarray  # (3, 3) in [0, 1]
    grad_dir: np.ndarray  # (2,)
    noise_scale: float
    noise_amp: float
    stripe_freq: float
    stripe_amp: float
    stripe_dir: np.ndarray  # (2,)
    seed: float
    texture_key: object | None  # a registered texture (e.g. an object class id) or None
    texture_amp: float
    texture_rect: np.ndarray  # (4,)


@dataclass
class DrawItem:
    """One mesh instance: `mesh_key` from `add_mesh`, or "hand" for the dynamic hand buffer."""

    mesh_key: object
    model_view: np.ndarray  # (4, 4) model -> camera, metres
    seg: int
    color: np.ndarray | None = None  # untextured albedo (3,)


class Renderer:
    """Renders textured meshes + a hand mesh over a procedural background, RGB and seg at once."""

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        moderngl = require("moderngl", "synth", "synthetic rendering (amt synth / amt demo)")

        # Mesa llvmpipe: one rasteriser thread measured faster here than its default of one
        # per core (the binning is serial); parallelism comes from worker processes instead.
        os.environ.setdefault("LP_NUM_THREADS", "1")
        self.width, self.height = width, height
        self.ctx = moderngl.create_standalone_context(backend="egl")
        self.prog = self.ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
        self.bg_prog = self.ctx.program(vertex_shader=_BG_VERTEX, fragment_shader=_BG_FRAGMENT)
        quad = np.array([-1, -1, 3, -1, -1, 3], dtype="f4")
        self.bg_vao = self.ctx.vertex_array(self.bg_prog, [(self.ctx.buffer(quad.tobytes()), "2f", "in_xy")])
        self.color_tex = self.ctx.texture((width, height), 4)
        self.seg_tex = self.ctx.texture((width, height), 1)
        self.depth_buffer = self.ctx.depth_renderbuffer((width, height))
        self.fbo = self.ctx.framebuffer([self.color_tex, self.seg_tex], self.depth_buffer)
        self.meshes: dict[object, object] = {}
        self.textures: dict[object, object] = {}
        self.blank = self.ctx.texture((1, 1), 3, bytes([255, 255, 255]))
        noise = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
        self.noise = self.ctx.texture((256, 256), 3, noise.tobytes())
        self.noise.repeat_x = self.noise.repeat_y = True
        self.hand_vbo = self.ctx.buffer(reserve=MAX_HAND_VERTICES * 8 * 4, dynamic=True)
        self.hand_vao = self.ctx.vertex_array(self.prog, [(self.hand_vbo, "3f 3f 2f", "in_pos", "in_nrm", "in_uv")])
        self.hand_count = 0
        log.debug("moderngl context: %s", self.ctx.info.get("GL_RENDERER"))

    @_current
    def add_mesh(
        self,
        key: object,
        positions: np.ndarray,
        normals: np.ndarray,
        uv: np.ndarray | None,
        texture: np.ndarray | None,
        faces: np.ndarray | None = None,
    ) -> None:
        """Upload a mesh: positions/normals (V, 3), uv (V, 2) or None, and its RGB texture.

        faces: (F, 3) vertex indices; None means the rows are a triangle soup (V = 3F).
        Indexed meshes shade each vertex once (llvmpipe's vertex stage is not free).
        """
        uv = np.zeros((len(positions), 2)) if uv is None else uv
        data = np.hstack([positions, normals, uv]).astype("f4")
        content = [(self.ctx.buffer(data.tobytes()), "3f 3f 2f", "in_pos", "in_nrm", "in_uv")]
        if faces is None:
            self.meshes[key] = (self.ctx.vertex_array(self.prog, content), len(positions))
        else:
            ibo = self.ctx.buffer(np.ascontiguousarray(faces, dtype="i4").tobytes())
            self.meshes[key] = (self.ctx.vertex_array(self.prog, content, ibo), 3 * len(faces))
        if texture is not None:
            self.add_texture(key, texture)

    @_current
    def add_texture(self, key: object, image: np.ndarray) -> None:
        """Register an (H, W, 3) uint8 RGB image (row 0 = top) under `key`."""
        tex = self.ctx.texture((image.shape[1], image.shape[0]), 3, np.ascontiguousarray(image[::-1]).tobytes())
        tex.build_mipmaps()
        tex.repeat_x = tex.repeat_y = True
        import moderngl  # optional dependency (extra "synth"), already checked by Renderer.__init__

        tex.filter = (moderngl.LINEAR_MIPMAP_NEAREST, moderngl.LINEAR)  # bilinear: llvmpipe is fragment-bound
        self.textures[key] = tex

    @_current
    def set_hand(self, positions: np.ndarray, normals: np.ndarray) -> None:
        """Replace the hand triangle soup (V, 3) metres in the frame its DrawItem's model_view maps from."""
        if len(positions) > MAX_HAND_VERTICES:
            raise ValueError(f"hand mesh has {len(positions)} vertices, renderer holds {MAX_HAND_VERTICES}")
        data = np.hstack([positions, normals, np.zeros((len(positions), 2))]).astype("f4")
        self.hand_vbo.write(data.tobytes())
        self.hand_count = len(positions)

    @_current
    def render(
        self, K: np.ndarray, items: list[DrawItem], light: Light, background: Background
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw `items` seen through K; returns RGB (H, W, 3) uint8 and seg (H, W) uint8."""
        import moderngl  # optional dependency (extra "synth"), already checked by Renderer.__init__

        self.fbo.use()
        self.fbo.clear(0.0, 0.0, 0.0, 1.0, depth=1.0)
        self.ctx.disable(moderngl.CULL_FACE)
        self.ctx.disable(moderngl.DEPTH_TEST)
        self._draw_background(background)
        self.ctx.enable(moderngl.DEPTH_TEST)
        proj = projection_from_K(K, self.width, self.height)
        self.prog["u_proj"].write(proj.T.astype("f4").tobytes())
        self.prog["u_light_dir"].value = tuple(light.direction)
        self.prog["u_light_color"].value = tuple(light.color)
        self.prog["u_ambient"].value = light.ambient
        self.prog["u_specular"].value = light.specular
        self.prog["u_tex"].value = 0
        for item in items:
            if item.mesh_key == "hand":
                vao, count = self.hand_vao, self.hand_count
            else:
                vao, count = self.meshes[item.mesh_key]
            tex = self.textures.get(item.mesh_key) if item.color is None else None
            (tex or self.blank).use(0)
            self.prog["u_use_tex"].value = tex is not None
            self.prog["u_color"].value = tuple(item.color) if item.color is not None else (1.0, 1.0, 1.0)
            self.prog["u_seg"].value = item.seg / 255.0
            self.prog["u_model_view"].write(item.model_view.T.astype("f4").tobytes())
            vao.render(moderngl.TRIANGLES, vertices=count)
        rgb = np.frombuffer(self.fbo.read(components=3, attachment=0), np.uint8).reshape(self.height, self.width, 3)
        seg = np.frombuffer(self.fbo.read(components=1, attachment=1), np.uint8).reshape(self.height, self.width)
        return rgb[::-1].copy(), seg[::-1].copy()

    @_current
    def depth(self) -> np.ndarray:
        """(H, W) float64 camera z (metres) of the last `render`, inf where nothing was drawn."""
        raw = np.frombuffer(self.fbo.read(components=1, attachment=-1, dtype="f4"), np.float32).reshape(
            self.height, self.width
        )
        ndc = 2.0 * raw[::-1].astype(np.float64) - 1.0
        z = 2.0 * FAR * NEAR / (FAR + NEAR - ndc * (FAR - NEAR))
        return np.where(raw[::-1] >= 1.0, np.inf, z)

    def _draw_background(self, bg: Background) -> None:
        p = self.bg_prog
        for i, name in enumerate(("u_c0", "u_c1", "u_c2")):
            p[name].value = tuple(bg.colors[i])
        p["u_grad_dir"].value = tuple(bg.grad_dir)
        p["u_noise_scale"].value = bg.noise_scale
        p["u_noise_amp"].value = bg.noise_amp
        p["u_stripe_freq"].value = bg.stripe_freq
        p["u_stripe_amp"].value = bg.stripe_amp
        p["u_stripe_dir"].value = tuple(bg.stripe_dir)
        p["u_seed"].value = bg.seed
        tex = self.textures.get(bg.texture_key) if bg.texture_key is not None else None
        (tex or self.blank).use(0)
        p["u_tex"].value = 0
        self.noise.use(1)
        p["u_noise"].value = 1
        p["u_tex_amp"].value = bg.texture_amp if tex is not None else 0.0
        p["u_tex_rect"].value = tuple(bg.texture_rect)
        self.bg_vao.render(vertices=3)

    @_current
    def clear_meshes(self) -> None:
        """Drop every uploaded mesh and texture (e.g. when the model set changes)."""
        for vao, _ in self.meshes.values():
            vao.release()
        for tex in self.textures.values():
            tex.release()
        self.meshes.clear()
        self.textures.clear()

    def release(self) -> None:
        self.ctx.release()
