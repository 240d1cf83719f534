#include "grpo/core/plot.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "grpo/core/files.h"
#include "test_util.h"

namespace grpo {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
using Colour = std::array<std::uint8_t, 3>;
constexpr Colour kWhite = {255, 255, 255};

// --- An independent PNG reader: bitwise CRC-32, Adler-32, stored deflate blocks only. ----------

std::uint32_t bitwise_crc32(const std::string& bytes, std::size_t begin, std::size_t end) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (std::size_t i = begin; i < end; ++i) {
    crc ^= static_cast<std::uint8_t>(bytes[i]);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::uint32_t naive_adler32(const std::string& bytes) {
  std::uint64_t a = 1, b = 0;
  for (unsigned char c : bytes) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  return static_cast<std::uint32_t>((b << 16) | a);
}

std::uint32_t read_u32(const std::string& s, std::size_t at) {
  return (std::uint32_t(std::uint8_t(s[at])) << 24) | (std::uint32_t(std::uint8_t(s[at + 1])) << 16) |
         (std::uint32_t(std::uint8_t(s[at + 2])) << 8) | std::uint32_t(std::uint8_t(s[at + 3]));
}

struct Chunk {
  std::string type, data;
};

struct DecodedPng {
  int width = 0, height = 0;
  std::vector<Chunk> chunks;
  std::vector<std::uint8_t> rgb;
  int stored_blocks = 0;
};

// Checks the structure with gtest assertions (ADD_FAILURE) and returns what it could decode.
DecodedPng decode_png(const std::string& png) {
  DecodedPng out;
  const std::string signature = "\x89PNG\r\n\x1a\n";
  if (png.compare(0, 8, signature) != 0) {
    ADD_FAILURE() << "bad PNG signature";
    return out;
  }
  std::size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const std::uint32_t length = read_u32(png, pos);
    if (pos + 12 + length > png.size()) {
      ADD_FAILURE() << "chunk at " << pos << " runs past the end";
      return out;
    }
    Chunk chunk{png.substr(pos + 4, 4), png.substr(pos + 8, length)};
    EXPECT_EQ(read_u32(png, pos + 8 + length), bitwise_crc32(png, pos + 4, pos + 8 + length))
        << "CRC of chunk " << chunk.type;
    out.chunks.push_back(chunk);
    pos += 12 + length;
  }
  EXPECT_EQ(pos, png.size()) << "bytes after the last chunk";
  if (out.chunks.size() < 3 || out.chunks.front().type != "IHDR" || out.chunks.back().type != "IEND") {
    ADD_FAILURE() << "expected IHDR ... IEND";
    return out;
  }
  const std::string& ihdr = out.chunks.front().data;
  EXPECT_EQ(ihdr.size(), 13u);
  out.width = static_cast<int>(read_u32(ihdr, 0));
  out.height = static_cast<int>(read_u32(ihdr, 4));
  EXPECT_EQ(ihdr.substr(8), std::string("\x08\x02\x00\x00\x00", 5)) << "8-bit RGB, deflate, filter 0, no interlace";
  EXPECT_TRUE(out.chunks.back().data.empty());

  std::string zlib;
  for (const Chunk& c : out.chunks) {
    if (c.type == "IDAT") zlib += c.data;
  }
  if (zlib.size() < 6) {
    ADD_FAILURE() << "IDAT too short";
    return out;
  }
  const auto cmf = std::uint8_t(zlib[0]), flg = std::uint8_t(zlib[1]);
  EXPECT_EQ(cmf & 0x0F, 8) << "deflate";
  EXPECT_LE(cmf >> 4, 7) << "window size";
  EXPECT_EQ((cmf * 256 + flg) % 31, 0) << "zlib header check bits";
  EXPECT_EQ(flg & 0x20, 0) << "no preset dictionary";

  std::string raw;
  std::size_t at = 2;
  bool final_block = false;
  while (!final_block) {
    if (at + 5 > zlib.size()) {
      ADD_FAILURE() << "deflate stream cut off";
      return out;
    }
    const auto header = std::uint8_t(zlib[at]);
    final_block = header & 1;
    EXPECT_EQ(header >> 1, 0) << "stored block (BTYPE 00)";
    const unsigned len = std::uint8_t(zlib[at + 1]) | (std::uint8_t(zlib[at + 2]) << 8);
    const unsigned nlen = std::uint8_t(zlib[at + 3]) | (std::uint8_t(zlib[at + 4]) << 8);
    EXPECT_EQ(len ^ 0xFFFFu, nlen);
    at += 5;
    if (at + len > zlib.size()) {
      ADD_FAILURE() << "stored block runs past the end";
      return out;
    }
    raw += zlib.substr(at, len);
    at += len;
    ++out.stored_blocks;
  }
  EXPECT_EQ(at + 4, zlib.size()) << "Adler-32 must end the stream";
  if (at + 4 <= zlib.size()) {
    EXPECT_EQ(read_u32(zlib, at), naive_adler32(raw));
  }

  const std::size_t row_bytes = static_cast<std::size_t>(out.width) * 3;
  EXPECT_EQ(raw.size(), (row_bytes + 1) * out.height);
  if (raw.size() != (row_bytes + 1) * out.height) return out;
  for (int y = 0; y < out.height; ++y) {
    const std::size_t row = y * (row_bytes + 1);
    EXPECT_EQ(raw[row], '\0') << "filter type of row " << y;
    out.rgb.insert(out.rgb.end(), raw.begin() + row + 1, raw.begin() + row + 1 + row_bytes);
  }
  return out;
}

// --- Pixel helpers. ----------------------------------------------------------------------------

Colour pixel(const PlotImage& image, int x, int y) {
  const std::size_t i = 3 * (static_cast<std::size_t>(y) * image.width + x);
  return {image.rgb[i], image.rgb[i + 1], image.rgb[i + 2]};
}

struct Box {
  int left = 1 << 30, top = 1 << 30, right = -1, bottom = -1, count = 0;
};

Box pixels_of(const PlotImage& image, const Colour& c) {
  Box b;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      if (pixel(image, x, y) != c) continue;
      b.left = std::min(b.left, x);
      b.right = std::max(b.right, x);
      b.top = std::min(b.top, y);
      b.bottom = std::max(b.bottom, y);
      ++b.count;
    }
  }
  return b;
}

// The legend swatch of colour `c`: the filled box whose top-left is the first pixel of that colour
// in reading order (the legend sits above the plot area).
Box swatch_of(const PlotImage& image, const Colour& c) {
  const Box all = pixels_of(image, c);
  Box b;
  if (all.count == 0) return b;
  b.top = b.bottom = all.top;
  b.left = 0;
  while (pixel(image, b.left, b.top) != c) ++b.left;
  b.right = b.left;
  while (b.right + 1 < image.width && pixel(image, b.right + 1, b.top) == c) ++b.right;
  while (b.bottom + 1 < image.height && pixel(image, b.left, b.bottom + 1) == c) ++b.bottom;
  b.count = (b.right - b.left + 1) * (b.bottom - b.top + 1);
  return b;
}

// Pixels of colour `c` outside its legend swatch: the series' line, as {x, y} pairs.
std::vector<std::pair<int, int>> line_pixels(const PlotImage& image, const Colour& c) {
  const Box swatch = swatch_of(image, c);
  std::vector<std::pair<int, int>> out;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      const bool in_swatch = x >= swatch.left && x <= swatch.right && y >= swatch.top && y <= swatch.bottom;
      if (!in_swatch && pixel(image, x, y) == c) out.emplace_back(x, y);
    }
  }
  return out;
}

PlotSeries line_series(std::string name, int n, double (*f)(double)) {
  PlotSeries s{std::move(name), {}, {}};
  for (int i = 0; i < n; ++i) {
    s.x.push_back(i);
    s.y.push_back(f(i));
  }
  return s;
}

// --- Encoder. ----------------------------------------------------------------------------------

TEST(PlotPng, SmallImageRoundTrips) {
  const std::vector<std::uint8_t> rgb = {255, 0, 0, 0,  255, 0,  0,   0,   255,   // row 0: red green blue
                                         0,   0, 0, 10, 20,  30, 255, 255, 255};  // row 1
  const std::string png = encode_png_rgb(3, 2, rgb);
  const DecodedPng decoded = decode_png(png);
  EXPECT_EQ(decoded.width, 3);
  EXPECT_EQ(decoded.height, 2);
  ASSERT_EQ(decoded.chunks.size(), 3u);
  EXPECT_EQ(decoded.chunks[1].type, "IDAT");
  EXPECT_EQ(decoded.stored_blocks, 1);
  EXPECT_EQ(decoded.rgb, rgb);
}

TEST(PlotPng, LargeImageSplitsIntoStoredBlocks) {
  const int width = 300, height = 200;  // 180,200 bytes of scanlines: three 64 KiB blocks
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(width) * height * 3);
  for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<std::uint8_t>((i * 7919) >> 3);
  const DecodedPng decoded = decode_png(encode_png_rgb(width, height, rgb));
  EXPECT_EQ(decoded.width, width);
  EXPECT_EQ(decoded.height, height);
  EXPECT_EQ(decoded.stored_blocks, 3);
  EXPECT_EQ(decoded.rgb, rgb);
}

TEST(PlotPng, RejectsBadSizes) {
  GRPO_EXPECT_THROW_MESSAGE(encode_png_rgb(0, 2, {}), std::invalid_argument,
                            "encode_png_rgb: width and height must be positive, got 0 x 2");
  GRPO_EXPECT_THROW_MESSAGE(encode_png_rgb(2, 2, std::vector<std::uint8_t>(11)), std::invalid_argument,
                            "encode_png_rgb: expected 12 bytes of RGB for 2 x 2, got 11");
}

// --- Rendering. --------------------------------------------------------------------------------

PlotPanel diagonal_panel(bool with_data) {
  PlotSeries s = line_series("rising", 101, [](double x) { return x; });
  if (!with_data) std::fill(s.y.begin(), s.y.end(), kNaN);
  return {"diagonal", "step", "value", {s}, 0.0, 100.0};
}

TEST(PlotRender, SizeAndWhiteBackgroundOutside) {
  const PlotImage image = render_plot({diagonal_panel(true), diagonal_panel(true)}, {400, 200});
  EXPECT_EQ(image.width, 400);
  EXPECT_EQ(image.height, 400);
  EXPECT_EQ(image.rgb.size(), 400u * 400 * 3);
  for (auto [x, y] : {std::pair{0, 0}, {399, 0}, {0, 399}, {399, 399}, {399, 100}, {200, 199}}) {
    EXPECT_EQ(pixel(image, x, y), kWhite) << x << "," << y;
  }
}

TEST(PlotRender, SeriesLineRisesAcrossThePlotArea) {
  const PlotImage image = render_plot({diagonal_panel(true)}, {400, 300});
  EXPECT_EQ(image.rgb, render_plot({diagonal_panel(true)}, {400, 300}).rgb) << "rendering is deterministic";
  const Colour blue = plot_series_colour(0);
  const std::vector<std::pair<int, int>> line = line_pixels(image, blue);
  ASSERT_GT(line.size(), 300u);
  int left = 1 << 30, right = -1;
  for (auto [x, y] : line) {
    left = std::min(left, x);
    right = std::max(right, x);
  }
  EXPECT_GT(right - left, 250) << "the line spans most of the width";
  // y = x rises: the mean row of the line's pixels falls as the column grows.
  const auto mean_row = [&](int x0, int x1) {
    double sum = 0;
    int n = 0;
    for (auto [x, y] : line) {
      if (x >= x0 && x <= x1) sum += y, ++n;
    }
    return n ? sum / n : kNaN;
  };
  const double row_left = mean_row(left, left + 10), row_mid = mean_row((left + right) / 2 - 5, (left + right) / 2 + 5),
               row_right = mean_row(right - 10, right);
  EXPECT_GT(row_left, row_mid + 50);
  EXPECT_GT(row_mid, row_right + 50);
  // Diagonal: the middle of the line sits halfway between its ends, and the plot area is white
  // (or light grid) well above and below it.
  EXPECT_NEAR(row_mid, (row_left + row_right) / 2, 3.0);
  const int mid_x = (left + right) / 2;
  for (int dy : {-40, 40}) {
    const Colour c = pixel(image, mid_x + 3, static_cast<int>(row_mid) + dy);
    EXPECT_NE(c, blue);
    EXPECT_GE(c[0], 200);  // white or grid grey
  }
  // Every line pixel is below the title and legend row.
  const Box swatch = swatch_of(image, blue);
  EXPECT_EQ(swatch.bottom - swatch.top + 1, 7);
  for (auto [x, y] : line) ASSERT_GT(y, swatch.bottom + 4);
}

TEST(PlotRender, LegendHasAFilledSwatchPerSeries) {
  PlotPanel panel = diagonal_panel(false);
  panel.series.push_back(panel.series[0]);
  panel.series[1].name = "second";
  const PlotImage image = render_plot({panel}, {400, 300});
  for (std::size_t i = 0; i < 2; ++i) {
    const Box all = pixels_of(image, plot_series_colour(i));
    const Box swatch = swatch_of(image, plot_series_colour(i));
    ASSERT_GT(all.count, 0) << "series " << i;
    EXPECT_EQ(all.count, swatch.count) << "only a filled box: no data, no line";
    EXPECT_GE(swatch.right - swatch.left + 1, 10);
    EXPECT_LT(swatch.bottom, 40) << "in the legend row at the top";
  }
  // No series: no series colour anywhere.
  panel.series.clear();
  EXPECT_EQ(pixels_of(render_plot({panel}, {400, 300}), plot_series_colour(0)).count, 0);
}

TEST(PlotRender, NanIsAGapInTheLine) {
  PlotSeries s = line_series("flat with gap", 101, [](double) { return 5.0; });
  for (int i = 40; i <= 60; ++i) s.y[i] = kNaN;
  const PlotImage image = render_plot({{"gap", "step", "", {s}, 0.0, 10.0}}, {400, 300});
  std::set<int> columns;
  int left = 1 << 30, right = -1;
  for (auto [x, y] : line_pixels(image, plot_series_colour(0))) {
    columns.insert(x);
    left = std::min(left, x);
    right = std::max(right, x);
  }
  ASSERT_GT(right - left, 250);
  const int width = right - left;
  for (int x = left + width * 42 / 100; x <= left + width * 58 / 100; ++x) EXPECT_EQ(columns.count(x), 0u) << x;
  for (int x = left; x <= left + width * 38 / 100; ++x) EXPECT_EQ(columns.count(x), 1u) << x;
  for (int x = left + width * 62 / 100; x <= right; ++x) EXPECT_EQ(columns.count(x), 1u) << x;
}

TEST(PlotRender, HandlesEdgeCases) {
  const PlotOptions options{300, 200};
  const Colour blue = plot_series_colour(0);
  const auto series_pixels = [&](PlotSeries s) {
    const PlotImage image = render_plot({{"t", "x", "y", {s}, std::nullopt, std::nullopt}}, options);
    return line_pixels(image, blue).size();
  };
  EXPECT_GT(series_pixels({"one point", {3.0}, {7.0}}), 8u) << "a single point is a dot";
  EXPECT_GT(series_pixels(line_series("constant", 50, [](double) { return 2.5; })), 100u);
  EXPECT_GT(series_pixels(line_series("zero", 50, [](double) { return 0.0; })), 100u);
  EXPECT_GT(series_pixels(line_series("negative", 50, [](double x) { return -1e6 - x * x; })), 100u);
  EXPECT_GT(series_pixels(line_series("tiny", 50, [](double x) { return 1e-9 * x; })), 100u);
  EXPECT_GT(series_pixels(line_series("many", 10000, [](double x) { return std::sin(x / 100.0); })), 500u);
  EXPECT_EQ(series_pixels({"empty", {}, {}}), 0u);
  for (double at_the_edge : {0.0, 1.0}) {  // an accuracy of 0 or 1 stays visible, not under the frame
    const PlotSeries s = line_series("edge", 50, [](double) { return 0.0; });
    PlotPanel panel{"t", "x", "y", {s}, 0.0, 1.0};
    std::fill(panel.series[0].y.begin(), panel.series[0].y.end(), at_the_edge);
    EXPECT_GT(line_pixels(render_plot({panel}, options), blue).size(), 400u) << at_the_edge;
  }
  EXPECT_EQ(series_pixels({"all nan", {1, 2}, {kNaN, kNaN}}), 0u);
  PlotSeries inf{"infinite", {0, 1, 2, 3}, {1, std::numeric_limits<double>::infinity(), 2, 3}};
  EXPECT_GT(series_pixels(inf), 20u);
  // Several panels, no series at all, empty texts and text outside ASCII.
  const PlotImage image = render_plot({{}, {"\xc3\xa9t\xc3\xa9", "", "", {}, -1.0, 1.0}}, options);
  EXPECT_EQ(image.height, 400);
}

TEST(PlotRender, RejectsBadInput) {
  GRPO_EXPECT_THROW_MESSAGE(render_plot({}), std::invalid_argument, "plot: no panels to draw");
  GRPO_EXPECT_THROW_MESSAGE(render_plot({{"reward", "", "", {{"mean", {1, 2, 3}, {1, 2}}}, {}, {}}}),
                            std::invalid_argument,
                            "plot: series 'mean' of panel 'reward' has 3 x values but 2 y values");
  GRPO_EXPECT_THROW_MESSAGE(render_plot({{"acc", "", "", {}, 1.0, 0.0}}), std::invalid_argument,
                            "plot: panel 'acc' has y_min 1 and y_max 0: expected finite values with y_min < y_max");
  GRPO_EXPECT_THROW_MESSAGE(
      render_plot({{"acc", "", "", {}, kNaN, std::nullopt}}), std::invalid_argument,
      "plot: panel 'acc' has y_min nan and y_max unset: expected finite values with y_min < y_max");
  EXPECT_THROW(render_plot({PlotPanel{}}, {100, 320}), std::invalid_argument);
  EXPECT_THROW(render_plot({PlotPanel{}}, {900, 50}), std::invalid_argument);
}

// --- Writing. ----------------------------------------------------------------------------------

TEST(PlotFile, WritesTheRenderAtomically) {
  test::TempDir dir;
  const std::string path = dir.path("run/plot.png");
  const std::vector<PlotPanel> panels = {diagonal_panel(true), diagonal_panel(false)};
  write_plot_png(path, panels, {320, 160});
  write_plot_png(path, panels, {320, 160});  // replaces
  const DecodedPng decoded = decode_png(read_file(path));
  const PlotImage image = render_plot(panels, {320, 160});
  EXPECT_EQ(decoded.width, 320);
  EXPECT_EQ(decoded.height, 320);
  EXPECT_EQ(decoded.rgb, image.rgb);
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path("run"))) ++entries;
  EXPECT_EQ(entries, 1) << "no temporary file left";
}

TEST(PlotFile, ErrorsNameThePath) {
  test::TempDir dir;
  dir.write("file", "x");
  const std::string path = dir.path("file/plot.png");  // its folder is a regular file
  try {
    write_plot_png(path, {diagonal_panel(true)});
    ADD_FAILURE() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_plot_png(dir.path("never.png"), {}), std::invalid_argument);
  EXPECT_FALSE(std::filesystem::exists(dir.path("never.png")));
}

}  // namespace
}  // namespace grpo
