// Line plots as PNG: a small raster (Canvas) with lines, rectangles and 5x7 text; axes with nice
// ticks; and a PNG encoder whose zlib stream holds stored deflate blocks (no compression), so no
// zlib is needed. Invariants: every pixel write is bounds-checked, lines are clipped to the plot
// area before rasterising, and non-finite data never reaches integer conversion.
#include "grpo/core/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>

#include "grpo/core/files.h"

namespace grpo {
namespace {

using Colour = std::array<std::uint8_t, 3>;

constexpr Colour kBackground = {255, 255, 255};
constexpr Colour kGrid = {228, 228, 228};
constexpr Colour kFrame = {90, 90, 90};
constexpr Colour kText = {20, 20, 20};

// Tableau 10 (matplotlib's default cycle).
constexpr std::array<Colour, 10> kPalette = {{{31, 119, 180},
                                              {255, 127, 14},
                                              {44, 160, 44},
                                              {214, 39, 40},
                                              {148, 103, 189},
                                              {140, 86, 75},
                                              {227, 119, 194},
                                              {127, 127, 127},
                                              {188, 189, 34},
                                              {23, 190, 207}}};

constexpr int kMinWidth = 160;
constexpr int kMinPanelHeight = 120;
constexpr int kMaxSide = 16384;

// ---------------------------------------------------------------------------------------------
// Font: ASCII 32..126, 5 columns of 7 bits each, bit 0 the top row.

constexpr int kGlyphWidth = 5;
constexpr int kGlyphHeight = 7;
constexpr int kGlyphAdvance = 6;

constexpr std::uint8_t kFont[95][5] = {
    {0x00, 0x00, 0x00, 0x00, 0x00},  // ' '
    {0x00, 0x00, 0x5F, 0x00, 0x00},  // !
    {0x00, 0x07, 0x00, 0x07, 0x00},  // "
    {0x14, 0x7F, 0x14, 0x7F, 0x14},  // #
    {0x24, 0x2A, 0x7F, 0x2A, 0x12},  // $
    {0x23, 0x13, 0x08, 0x64, 0x62},  // %
    {0x36, 0x49, 0x55, 0x22, 0x50},  // &
    {0x00, 0x05, 0x03, 0x00, 0x00},  // '
    {0x00, 0x1C, 0x22, 0x41, 0x00},  // (
    {0x00, 0x41, 0x22, 0x1C, 0x00},  // )
    {0x14, 0x08, 0x3E, 0x08, 0x14},  // *
    {0x08, 0x08, 0x3E, 0x08, 0x08},  // +
    {0x00, 0x50, 0x30, 0x00, 0x00},  // ,
    {0x08, 0x08, 0x08, 0x08, 0x08},  // -
    {0x00, 0x60, 0x60, 0x00, 0x00},  // .
    {0x20, 0x10, 0x08, 0x04, 0x02},  // /
    {0x3E, 0x51, 0x49, 0x45, 0x3E},  // 0
    {0x00, 0x42, 0x7F, 0x40, 0x00},  // 1
    {0x42, 0x61, 0x51, 0x49, 0x46},  // 2
    {0x21, 0x41, 0x45, 0x4B, 0x31},  // 3
    {0x18, 0x14, 0x12, 0x7F, 0x10},  // 4
    {0x27, 0x45, 0x45, 0x45, 0x39},  // 5
    {0x3C, 0x4A, 0x49, 0x49, 0x30},  // 6
    {0x01, 0x71, 0x09, 0x05, 0x03},  // 7
    {0x36, 0x49, 0x49, 0x49, 0x36},  // 8
    {0x06, 0x49, 0x49, 0x29, 0x1E},  // 9
    {0x00, 0x36, 0x36, 0x00, 0x00},  // :
    {0x00, 0x56, 0x36, 0x00, 0x00},  // ;
    {0x08, 0x14, 0x22, 0x41, 0x00},  // <
    {0x14, 0x14, 0x14, 0x14, 0x14},  // =
    {0x00, 0x41, 0x22, 0x14, 0x08},  // >
    {0x02, 0x01, 0x51, 0x09, 0x06},  // ?
    {0x32, 0x49, 0x79, 0x41, 0x3E},  // @
    {0x7E, 0x11, 0x11, 0x11, 0x7E},  // A
    {0x7F, 0x49, 0x49, 0x49, 0x36},  // B
    {0x3E, 0x41, 0x41, 0x41, 0x22},  // C
    {0x7F, 0x41, 0x41, 0x22, 0x1C},  // D
    {0x7F, 0x49, 0x49, 0x49, 0x41},  // E
    {0x7F, 0x09, 0x09, 0x09, 0x01},  // F
    {0x3E, 0x41, 0x49, 0x49, 0x7A},  // G
    {0x7F, 0x08, 0x08, 0x08, 0x7F},  // H
    {0x00, 0x41, 0x7F, 0x41, 0x00},  // I
    {0x20, 0x40, 0x41, 0x3F, 0x01},  // J
    {0x7F, 0x08, 0x14, 0x22, 0x41},  // K
    {0x7F, 0x40, 0x40, 0x40, 0x40},  // L
    {0x7F, 0x02, 0x0C, 0x02, 0x7F},  // M
    {0x7F, 0x04, 0x08, 0x10, 0x7F},  // N
    {0x3E, 0x41, 0x41, 0x41, 0x3E},  // O
    {0x7F, 0x09, 0x09, 0x09, 0x06},  // P
    {0x3E, 0x41, 0x51, 0x21, 0x5E},  // Q
    {0x7F, 0x09, 0x19, 0x29, 0x46},  // R
    {0x46, 0x49, 0x49, 0x49, 0x31},  // S
    {0x01, 0x01, 0x7F, 0x01, 0x01},  // T
    {0x3F, 0x40, 0x40, 0x40, 0x3F},  // U
    {0x1F, 0x20, 0x40, 0x20, 0x1F},  // V
    {0x3F, 0x40, 0x38, 0x40, 0x3F},  // W
    {0x63, 0x14, 0x08, 0x14, 0x63},  // X
    {0x07, 0x08, 0x70, 0x08, 0x07},  // Y
    {0x61, 0x51, 0x49, 0x45, 0x43},  // Z
    {0x00, 0x7F, 0x41, 0x41, 0x00},  // [
    {0x02, 0x04, 0x08, 0x10, 0x20},  // backslash
    {0x00, 0x41, 0x41, 0x7F, 0x00},  // ]
    {0x04, 0x02, 0x01, 0x02, 0x04},  // ^
    {0x40, 0x40, 0x40, 0x40, 0x40},  // _
    {0x00, 0x01, 0x02, 0x04, 0x00},  // `
    {0x20, 0x54, 0x54, 0x54, 0x78},  // a
    {0x7F, 0x48, 0x44, 0x44, 0x38},  // b
    {0x38, 0x44, 0x44, 0x44, 0x20},  // c
    {0x38, 0x44, 0x44, 0x48, 0x7F},  // d
    {0x38, 0x54, 0x54, 0x54, 0x18},  // e
    {0x08, 0x7E, 0x09, 0x01, 0x02},  // f
    {0x0C, 0x52, 0x52, 0x52, 0x3E},  // g
    {0x7F, 0x08, 0x04, 0x04, 0x78},  // h
    {0x00, 0x44, 0x7D, 0x40, 0x00},  // i
    {0x20, 0x40, 0x44, 0x3D, 0x00},  // j
    {0x7F, 0x10, 0x28, 0x44, 0x00},  // k
    {0x00, 0x41, 0x7F, 0x40, 0x00},  // l
    {0x7C, 0x04, 0x18, 0x04, 0x78},  // m
    {0x7C, 0x08, 0x04, 0x04, 0x78},  // n
    {0x38, 0x44, 0x44, 0x44, 0x38},  // o
    {0x7C, 0x14, 0x14, 0x14, 0x08},  // p
    {0x08, 0x14, 0x14, 0x18, 0x7C},  // q
    {0x7C, 0x08, 0x04, 0x04, 0x08},  // r
    {0x48, 0x54, 0x54, 0x54, 0x20},  // s
    {0x04, 0x3F, 0x44, 0x40, 0x20},  // t
    {0x3C, 0x40, 0x40, 0x20, 0x7C},  // u
    {0x1C, 0x20, 0x40, 0x20, 0x1C},  // v
    {0x3C, 0x40, 0x30, 0x40, 0x3C},  // w
    {0x44, 0x28, 0x10, 0x28, 0x44},  // x
    {0x0C, 0x50, 0x50, 0x50, 0x3C},  // y
    {0x44, 0x64, 0x54, 0x4C, 0x44},  // z
    {0x00, 0x08, 0x36, 0x41, 0x00},  // {
    {0x00, 0x00, 0x7F, 0x00, 0x00},  // |
    {0x00, 0x41, 0x36, 0x08, 0x00},  // }
    {0x08, 0x04, 0x08, 0x10, 0x08},  // ~
};

const std::uint8_t* glyph(char c) {
  const int code = static_cast<unsigned char>(c);
  return kFont[(code >= 32 && code <= 126 ? code : '?') - 32];
}

int text_width(const std::string& text, int scale) {
  return text.empty() ? 0 : (static_cast<int>(text.size()) * kGlyphAdvance - 1) * scale;
}

// ---------------------------------------------------------------------------------------------
// Canvas

struct Rect {
  int left, top, right, bottom;  // inclusive
};

class Canvas {
 public:
  Canvas(int width, int height) : image_{width, height, {}} {
    image_.rgb.resize(static_cast<std::size_t>(width) * height * 3);
    for (std::size_t i = 0; i < image_.rgb.size(); i += 3) {
      std::copy(kBackground.begin(), kBackground.end(), image_.rgb.begin() + i);
    }
  }

  void set(int x, int y, const Colour& c) {
    if (x < 0 || y < 0 || x >= image_.width || y >= image_.height) return;
    const std::size_t i = 3 * (static_cast<std::size_t>(y) * image_.width + x);
    std::copy(c.begin(), c.end(), image_.rgb.begin() + i);
  }

  void fill(const Rect& r, const Colour& c) {
    for (int y = r.top; y <= r.bottom; ++y) {
      for (int x = r.left; x <= r.right; ++x) set(x, y, c);
    }
  }

  void hline(int x0, int x1, int y, const Colour& c) { fill({x0, y, x1, y}, c); }
  void vline(int x, int y0, int y1, const Colour& c) { fill({x, y0, x, y1}, c); }

  // Left to right, top of the glyphs at `top`.
  void text(int left, int top, const std::string& s, const Colour& c, int scale = 1) {
    for (std::size_t i = 0; i < s.size(); ++i) {
      const std::uint8_t* g = glyph(s[i]);
      const int x = left + static_cast<int>(i) * kGlyphAdvance * scale;
      for (int col = 0; col < kGlyphWidth; ++col) {
        for (int row = 0; row < kGlyphHeight; ++row) {
          if ((g[col] >> row) & 1) {
            fill({x + col * scale, top + row * scale, x + col * scale + scale - 1, top + row * scale + scale - 1}, c);
          }
        }
      }
    }
  }

  // Bottom to top (rotated a quarter turn counter-clockwise): the glyphs' tops face `left`, the
  // first character's left edge at row `bottom`.
  void text_up(int left, int bottom, const std::string& s, const Colour& c) {
    for (std::size_t i = 0; i < s.size(); ++i) {
      const std::uint8_t* g = glyph(s[i]);
      const int y = bottom - static_cast<int>(i) * kGlyphAdvance;
      for (int col = 0; col < kGlyphWidth; ++col) {
        for (int row = 0; row < kGlyphHeight; ++row) {
          if ((g[col] >> row) & 1) set(left + row, y - col, c);
        }
      }
    }
  }

  // A 2-pixel-wide line from (ax, ay) to (bx, by), in pixel coordinates, drawn only inside `clip`.
  void line(double ax, double ay, double bx, double by, const Colour& c, const Rect& clip) {
    if (!clip_line(ax, ay, bx, by, clip)) return;
    int x0 = static_cast<int>(std::lround(ax)), y0 = static_cast<int>(std::lround(ay));
    const int x1 = static_cast<int>(std::lround(bx)), y1 = static_cast<int>(std::lround(by));
    const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0);
    const int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy;
    while (true) {
      for (int oy = 0; oy < 2; ++oy) {
        for (int ox = 0; ox < 2; ++ox) set_clipped(x0 + ox, y0 + oy, c, clip);
      }
      if (x0 == x1 && y0 == y1) break;
      const int e2 = 2 * err;
      if (e2 >= dy) {
        err += dy;
        x0 += sx;
      }
      if (e2 <= dx) {
        err += dx;
        y0 += sy;
      }
    }
  }

  // A 4x4 dot centred on (x, y), drawn only inside `clip`.
  void dot(double x, double y, const Colour& c, const Rect& clip) {
    if (x < clip.left || x > clip.right || y < clip.top || y > clip.bottom) return;
    const int cx = static_cast<int>(std::lround(x)), cy = static_cast<int>(std::lround(y));
    for (int oy = -1; oy <= 2; ++oy) {
      for (int ox = -1; ox <= 2; ++ox) set_clipped(cx + ox, cy + oy, c, clip);
    }
  }

  PlotImage take() { return std::move(image_); }

 private:
  void set_clipped(int x, int y, const Colour& c, const Rect& clip) {
    if (x >= clip.left && x <= clip.right && y >= clip.top && y <= clip.bottom) set(x, y, c);
  }

  // Liang-Barsky: cuts the segment to `clip`; false when nothing of it is inside.
  static bool clip_line(double& ax, double& ay, double& bx, double& by, const Rect& clip) {
    if (!std::isfinite(ax) || !std::isfinite(ay) || !std::isfinite(bx) || !std::isfinite(by)) return false;
    const double dx = bx - ax, dy = by - ay;
    double t0 = 0.0, t1 = 1.0;
    const double p[4] = {-dx, dx, -dy, dy};
    const double q[4] = {ax - clip.left, clip.right - ax, ay - clip.top, clip.bottom - ay};
    for (int i = 0; i < 4; ++i) {
      if (p[i] == 0.0) {
        if (q[i] < 0.0) return false;
        continue;
      }
      const double t = q[i] / p[i];
      if (p[i] < 0.0) {
        t0 = std::max(t0, t);
      } else {
        t1 = std::min(t1, t);
      }
      if (t0 > t1) return false;
    }
    const double x0 = ax + t0 * dx, y0 = ay + t0 * dy;
    bx = ax + t1 * dx;
    by = ay + t1 * dy;
    ax = x0;
    ay = y0;
    return true;
  }

  PlotImage image_;
};

// ---------------------------------------------------------------------------------------------
// Axes

std::string format_number(double v, const char* format = "%g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

struct Axis {
  double lo = 0.0, hi = 1.0;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

// 1, 2 or 5 times a power of ten, near range / target_count.
double nice_step(double range, int target_count) {
  const double raw = range / std::max(1, target_count);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / magnitude;
  return (r < 1.5 ? 1.0 : r < 3.0 ? 2.0 : r < 7.0 ? 5.0 : 10.0) * magnitude;
}

// `lo`/`hi` from the data (NaN when there is none); `fixed_lo`/`fixed_hi` override them and are
// kept exactly, the other ends get a margin of `pad` times the range, so lines do not hug the frame.
Axis make_axis(double lo, double hi, std::optional<double> fixed_lo, std::optional<double> fixed_hi, double pad,
               int target_count) {
  if (std::isnan(lo)) lo = hi = 0.0;
  if (fixed_lo) lo = *fixed_lo;
  if (fixed_hi) hi = *fixed_hi;
  if (hi <= lo) {  // a constant series, one point, or data beyond one fixed end
    const double half = lo == 0.0 && hi == 0.0 ? 1.0 : std::max(std::abs(lo), std::abs(hi)) * 0.1;
    if (fixed_lo && !fixed_hi) {
      hi = lo + half;
    } else if (fixed_hi && !fixed_lo) {
      lo = hi - half;
    } else {
      lo -= half;
      hi += half;
    }
  }
  constexpr double kHuge = 1e300;  // keeps hi - lo finite
  lo = std::clamp(lo, -kHuge, kHuge);
  hi = std::clamp(hi, -kHuge, kHuge);
  if (!(hi - lo > std::abs(lo) * 1e-12)) hi = lo + std::max(std::abs(lo) * 1e-6, 1e-300);
  const double margin = (hi - lo) * pad;
  if (!fixed_lo) lo -= margin;
  if (!fixed_hi) hi += margin;

  Axis axis;
  const double step = nice_step(hi - lo, target_count);
  axis.lo = lo;
  axis.hi = hi;
  const double first = std::ceil(lo / step - 1e-9);
  for (double k = first; axis.ticks.size() < 100; k += 1.0) {
    double v = k * step;
    if (v > hi + step * 1e-9) break;
    if (std::abs(v) < step * 1e-9) v = 0.0;  // no "-0"
    axis.ticks.push_back(v);
  }
  const double largest = std::max(std::abs(lo), std::abs(hi));
  const int decimals = static_cast<int>(std::max(0.0, -std::floor(std::log10(step) + 1e-9)));
  const bool fixed_point = largest < 1e7 && decimals <= 6;
  for (double v : axis.ticks) {
    axis.labels.push_back(fixed_point ? format_number(v, ("%." + std::to_string(decimals) + "f").c_str())
                                      : format_number(v, "%.3g"));
  }
  return axis;
}

// Range of the finite points of all series: {lo, hi} for x and y, NaN when there are none.
struct DataRange {
  double x_lo = NAN, x_hi = NAN, y_lo = NAN, y_hi = NAN;
};

DataRange data_range(const PlotPanel& panel) {
  DataRange r;
  for (const auto& s : panel.series) {
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      r.x_lo = std::isnan(r.x_lo) ? s.x[i] : std::min(r.x_lo, s.x[i]);
      r.x_hi = std::isnan(r.x_hi) ? s.x[i] : std::max(r.x_hi, s.x[i]);
      r.y_lo = std::isnan(r.y_lo) ? s.y[i] : std::min(r.y_lo, s.y[i]);
      r.y_hi = std::isnan(r.y_hi) ? s.y[i] : std::max(r.y_hi, s.y[i]);
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Layout of one panel, in pixels from the image's top left.

constexpr int kPad = 8;         // outer padding
constexpr int kRowHeight = 14;  // title / legend row
constexpr int kTickLength = 4;
constexpr int kSwatchWidth = 14;

struct LegendEntry {
  int left, top;  // of the swatch
  std::size_t series;
};

void validate(const std::vector<PlotPanel>& panels, const PlotOptions& options) {
  if (panels.empty()) throw std::invalid_argument("plot: no panels to draw");
  const long long height = static_cast<long long>(options.panel_height) * panels.size();
  if (options.width < kMinWidth || options.panel_height < kMinPanelHeight || options.width > kMaxSide ||
      height > kMaxSide) {
    throw std::invalid_argument("plot: image of width " + std::to_string(options.width) + " and panel height " +
                                std::to_string(options.panel_height) + " x " + std::to_string(panels.size()) +
                                " panels is outside " + std::to_string(kMinWidth) + ".." + std::to_string(kMaxSide) +
                                " wide, " + std::to_string(kMinPanelHeight) + " per panel, " +
                                std::to_string(kMaxSide) + " in all");
  }
  for (const auto& panel : panels) {
    for (const auto& s : panel.series) {
      if (s.x.size() != s.y.size()) {
        throw std::invalid_argument("plot: series '" + s.name + "' of panel '" + panel.title + "' has " +
                                    std::to_string(s.x.size()) + " x values but " + std::to_string(s.y.size()) +
                                    " y values");
      }
    }
    if ((panel.y_min && !std::isfinite(*panel.y_min)) || (panel.y_max && !std::isfinite(*panel.y_max)) ||
        (panel.y_min && panel.y_max && !(*panel.y_min < *panel.y_max))) {
      throw std::invalid_argument("plot: panel '" + panel.title + "' has y_min " +
                                  (panel.y_min ? format_number(*panel.y_min) : "unset") + " and y_max " +
                                  (panel.y_max ? format_number(*panel.y_max) : "unset") +
                                  ": expected finite values with y_min < y_max");
    }
  }
}

void draw_panel(Canvas& canvas, const PlotPanel& panel, int top, int plot_left, const Axis& y_axis, int width,
                int panel_height) {
  const int bottom = top + panel_height - 1;

  // Title, then legend entries flowing after it and wrapping onto further rows.
  const int title_scale = 2;
  canvas.text(plot_left, top + kPad, panel.title, kText, title_scale);
  const int plot_right = width - 1 - 3 * kPad;
  const int max_rows = std::max(1, (panel_height - 2 * kPad - 100) / kRowHeight);
  std::vector<LegendEntry> legend;
  int row = 0;
  int x = plot_left + text_width(panel.title, title_scale) + (panel.title.empty() ? 0 : 3 * kPad);
  for (std::size_t i = 0; i < panel.series.size(); ++i) {
    const int entry_width = kSwatchWidth + 4 + text_width(panel.series[i].name, 1);
    if (x + entry_width > plot_right && x > plot_left) {
      if (row + 1 >= max_rows) break;  // no room left: later series get no legend entry
      ++row;
      x = plot_left;
    }
    legend.push_back({x, top + kPad + row * kRowHeight + 4, i});
    x += entry_width + 2 * kPad;
  }
  const int rows = row + 1;

  // Plot area: the frame's pixels. Inside it, data pixels.
  const Rect frame{plot_left, top + kPad + rows * kRowHeight + kPad, plot_right,
                   bottom - kPad - kGlyphHeight - 6 - kGlyphHeight - kTickLength - 4};
  const Rect inside{frame.left + 1, frame.top + 1, frame.right - 1, frame.bottom - 1};
  const int plot_width = frame.right - frame.left, plot_height = frame.bottom - frame.top;

  const DataRange range = data_range(panel);
  const Axis x_axis = make_axis(range.x_lo, range.x_hi, std::nullopt, std::nullopt, 0.0, std::max(2, plot_width / 90));
  // The axis ranges map onto the inside of the frame less one pixel at the right and bottom, so
  // the 2-pixel line brush stays visible at the ends of a fixed range (an accuracy of 0 or 1).
  const auto to_px = [&](double v) {
    return inside.left + (v - x_axis.lo) / (x_axis.hi - x_axis.lo) * (inside.right - 1 - inside.left);
  };
  const auto to_py = [&](double v) {
    return inside.bottom - 1 - (v - y_axis.lo) / (y_axis.hi - y_axis.lo) * (inside.bottom - 1 - inside.top);
  };

  // Grid.
  for (double t : x_axis.ticks) {
    const int px = static_cast<int>(std::lround(to_px(t)));
    if (px > frame.left && px < frame.right) canvas.vline(px, inside.top, inside.bottom, kGrid);
  }
  for (double t : y_axis.ticks) {
    const int py = static_cast<int>(std::lround(to_py(t)));
    if (py > frame.top && py < frame.bottom) canvas.hline(inside.left, inside.right, py, kGrid);
  }

  // Series.
  for (std::size_t i = 0; i < panel.series.size(); ++i) {
    const PlotSeries& s = panel.series[i];
    const Colour colour = plot_series_colour(i);
    const auto finite = [&](std::size_t j) {
      return j < s.x.size() && std::isfinite(s.x[j]) && std::isfinite(s.y[j]) && std::isfinite(to_px(s.x[j])) &&
             std::isfinite(to_py(s.y[j]));
    };
    for (std::size_t j = 0; j < s.x.size(); ++j) {
      if (!finite(j)) continue;
      const double px = to_px(s.x[j]), py = to_py(s.y[j]);
      if (finite(j + 1)) {
        canvas.line(px, py, to_px(s.x[j + 1]), to_py(s.y[j + 1]), colour, inside);
      } else if (j == 0 || !finite(j - 1)) {
        canvas.dot(px, py, colour, inside);
      }
    }
  }

  // Frame, ticks and tick labels.
  canvas.hline(frame.left, frame.right, frame.top, kFrame);
  canvas.hline(frame.left, frame.right, frame.bottom, kFrame);
  canvas.vline(frame.left, frame.top, frame.bottom, kFrame);
  canvas.vline(frame.right, frame.top, frame.bottom, kFrame);
  for (std::size_t k = 0; k < x_axis.ticks.size(); ++k) {
    const int px = static_cast<int>(std::lround(to_px(x_axis.ticks[k])));
    canvas.vline(px, frame.bottom + 1, frame.bottom + kTickLength, kFrame);
    canvas.text(px - text_width(x_axis.labels[k], 1) / 2, frame.bottom + kTickLength + 3, x_axis.labels[k], kText);
  }
  for (std::size_t k = 0; k < y_axis.ticks.size(); ++k) {
    const int py = static_cast<int>(std::lround(to_py(y_axis.ticks[k])));
    canvas.hline(frame.left - kTickLength, frame.left - 1, py, kFrame);
    canvas.text(frame.left - kTickLength - 3 - text_width(y_axis.labels[k], 1), py - kGlyphHeight / 2, y_axis.labels[k],
                kText);
  }

  // Axis labels.
  canvas.text(frame.left + plot_width / 2 - text_width(panel.x_label, 1) / 2, bottom - kPad - kGlyphHeight + 1,
              panel.x_label, kText);
  canvas.text_up(kPad, frame.top + plot_height / 2 + text_width(panel.y_label, 1) / 2, panel.y_label, kText);

  // Legend.
  for (const LegendEntry& e : legend) {
    canvas.fill({e.left, e.top, e.left + kSwatchWidth - 1, e.top + kGlyphHeight - 1}, plot_series_colour(e.series));
    canvas.text(e.left + kSwatchWidth + 4, e.top, panel.series[e.series].name, kText);
  }
}

// ---------------------------------------------------------------------------------------------
// PNG

std::uint32_t crc32(const std::string& bytes, std::size_t begin) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = begin; i < bytes.size(); ++i) {
    c = table[(c ^ static_cast<std::uint8_t>(bytes[i])) & 0xFF] ^ (c >> 8);
  }
  return c ^ 0xFFFFFFFFu;
}

std::uint32_t adler32(const std::string& bytes) {
  constexpr std::uint32_t kModulus = 65521;
  std::uint32_t a = 1, b = 0;
  for (unsigned char byte : bytes) {
    a = (a + byte) % kModulus;
    b = (b + a) % kModulus;
  }
  return (b << 16) | a;
}

void put_u32_big_endian(std::string& out, std::uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

// Appends one chunk: length, type, data, CRC-32 of type and data.
void put_chunk(std::string& out, const char* type, const std::string& data) {
  put_u32_big_endian(out, static_cast<std::uint32_t>(data.size()));
  const std::size_t crc_begin = out.size();
  out.append(type, 4);
  out.append(data);
  put_u32_big_endian(out, crc32(out, crc_begin));
}

// A zlib stream (RFC 1950) of stored deflate blocks (RFC 1951, BTYPE 00) holding `raw`.
std::string zlib_stored(const std::string& raw) {
  constexpr std::size_t kMaxBlock = 65535;
  std::string out = {'\x78', '\x01'};  // deflate, 32K window; (0x78 * 256 + 0x01) % 31 == 0
  std::size_t pos = 0;
  do {
    const std::size_t n = std::min(kMaxBlock, raw.size() - pos);
    const bool last = pos + n == raw.size();
    out.push_back(last ? '\x01' : '\x00');  // BFINAL, BTYPE = 00
    out.push_back(static_cast<char>(n & 0xFF));
    out.push_back(static_cast<char>(n >> 8));
    out.push_back(static_cast<char>(~n & 0xFF));
    out.push_back(static_cast<char>((~n >> 8) & 0xFF));
    out.append(raw, pos, n);
    pos += n;
  } while (pos < raw.size());
  put_u32_big_endian(out, adler32(raw));
  return out;
}

}  // namespace

std::array<std::uint8_t, 3> plot_series_colour(std::size_t index) { return kPalette[index % kPalette.size()]; }

PlotImage render_plot(const std::vector<PlotPanel>& panels, const PlotOptions& options) {
  validate(panels, options);
  const int width = options.width, panel_height = options.panel_height;

  // y axes first: the left margin fits the widest y tick label of all panels, so frames align.
  std::vector<Axis> y_axes;
  int widest_label = 0;
  for (const auto& panel : panels) {
    const DataRange range = data_range(panel);
    y_axes.push_back(
        make_axis(range.y_lo, range.y_hi, panel.y_min, panel.y_max, 0.05, std::max(2, (panel_height - 110) / 45)));
    for (const auto& label : y_axes.back().labels) widest_label = std::max(widest_label, text_width(label, 1));
  }
  const int plot_left = std::min(kPad + kGlyphHeight + 6 + widest_label + 3 + kTickLength, width / 2);

  Canvas canvas(width, panel_height * static_cast<int>(panels.size()));
  for (std::size_t p = 0; p < panels.size(); ++p) {
    draw_panel(canvas, panels[p], static_cast<int>(p) * panel_height, plot_left, y_axes[p], width, panel_height);
  }
  return canvas.take();
}

void write_plot_png(const std::string& path, const std::vector<PlotPanel>& panels, const PlotOptions& options) {
  const PlotImage image = render_plot(panels, options);
  write_file_atomic(path, encode_png_rgb(image.width, image.height, image.rgb));
}

std::string encode_png_rgb(int width, int height, const std::vector<std::uint8_t>& rgb) {
  if (width <= 0 || height <= 0) {
    throw std::invalid_argument("encode_png_rgb: width and height must be positive, got " + std::to_string(width) +
                                " x " + std::to_string(height));
  }
  const std::size_t row_bytes = static_cast<std::size_t>(width) * 3;
  const std::size_t expected = row_bytes * static_cast<std::size_t>(height);
  if (rgb.size() != expected) {
    throw std::invalid_argument("encode_png_rgb: expected " + std::to_string(expected) + " bytes of RGB for " +
                                std::to_string(width) + " x " + std::to_string(height) + ", got " +
                                std::to_string(rgb.size()));
  }
  // Scanlines, each led by filter type 0 (none).
  std::string raw;
  raw.reserve((row_bytes + 1) * height);
  for (int y = 0; y < height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(rgb.data()) + y * row_bytes, row_bytes);
  }

  std::string png = "\x89PNG\r\n\x1a\n";
  std::string header;
  put_u32_big_endian(header, static_cast<std::uint32_t>(width));
  put_u32_big_endian(header, static_cast<std::uint32_t>(height));
  header += {'\x08', '\x02', '\x00', '\x00', '\x00'};  // 8 bits, RGB, deflate, filter 0, no interlace
  put_chunk(png, "IHDR", header);
  put_chunk(png, "IDAT", zlib_stored(raw));
  put_chunk(png, "IEND", "");
  return png;
}

}  // namespace grpo
