// Line plots of a run's metrics (reward and accuracy per step) as PNG files, with no dependencies:
// panels are drawn into an RGB buffer with a built-in 5x7 bitmap font, then encoded as a PNG whose
// zlib stream uses stored (uncompressed) deflate blocks, with CRC-32 and Adler-32 computed here.
//
// Layout of one panel (panel_height pixels tall, panels stacked top to bottom):
//   title, then the legend (a colour swatch and the name of each series, wrapping onto more rows)
//   a framed plot area with a light grid at the ticks, tick labels on "nice" numbers (1, 2, 5 x 10^k)
//   the y label drawn vertically on the left, the x label centred below the x tick labels
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace grpo {

// One line. Points are joined in the order given; a non-finite x or y (NaN) is a gap in the line.
// A point with no finite neighbour is drawn as a dot.
struct PlotSeries {
  std::string name;       // shown in the legend, e.g. "reward mean"
  std::vector<double> x;  // e.g. steps 0, 1, 2, ...
  std::vector<double> y;  // same size as x
};

// One plot area with its axes. The x range spans the finite data; the y range spans it plus 5%
// at each end, unless y_min / y_max fix that end (e.g. 0 and 1 for an accuracy). Data outside a
// fixed range is clipped at the frame.
struct PlotPanel {
  std::string title;    // e.g. "reward per step"; ASCII 32..126, other bytes drawn as '?'
  std::string x_label;  // e.g. "step"
  std::string y_label;  // e.g. "reward"
  std::vector<PlotSeries> series;
  std::optional<double> y_min;  // lower end of the y axis; from the data when unset
  std::optional<double> y_max;  // upper end of the y axis; from the data when unset
};

struct PlotOptions {
  int width = 900;         // image width in pixels, at least 160
  int panel_height = 320;  // height of each panel in pixels, at least 120
};

// An RGB image, rows top to bottom, 3 bytes per pixel: rgb[3 * (row * width + column) + channel].
struct PlotImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;
};

// The colour of series `index` (a fixed palette of 10, repeating): blue, orange, green, red, ...
std::array<std::uint8_t, 3> plot_series_colour(std::size_t index);

// Draws `panels` stacked vertically: width x (panels.size() * panel_height) pixels.
// Throws std::invalid_argument for no panels, a series whose x and y sizes differ, y_min >= y_max,
// a non-finite y_min / y_max, or a size below the minimum.
PlotImage render_plot(const std::vector<PlotPanel>& panels, const PlotOptions& options = {});

// render_plot, then writes the PNG to `path` atomically (temporary file + rename, see
// write_file_atomic). Throws std::invalid_argument as render_plot does, std::runtime_error naming
// the path when it cannot be written.
void write_plot_png(const std::string& path, const std::vector<PlotPanel>& panels, const PlotOptions& options = {});

// A PNG file (8-bit RGB, no interlace) holding `rgb` (as in PlotImage), as bytes.
// Throws std::invalid_argument unless width, height > 0 and rgb.size() == 3 * width * height.
std::string encode_png_rgb(int width, int height, const std::vector<std::uint8_t>& rgb);

}  // namespace grpo
