//! Slice geometry → order along the slice normal and the voxel → LPS affine, with the checks a
//! stack must pass (duplicates, gaps, uneven spacing, tilt). Pure code: no DICOM parsing here.

use nalgebra::Vector3;

use crate::volume::Affine;

/// Geometry of one frame in LPS mm, as DICOM states it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameGeometry {
    /// Image Position (Patient): centre of the first transmitted pixel, LPS mm.
    pub position: [f64; 3],
    /// First three values of Image Orientation (Patient): direction of increasing column index.
    pub row_direction: [f64; 3],
    /// Last three values of Image Orientation (Patient): direction of increasing row index.
    pub column_direction: [f64; 3],
    /// Pixel Spacing: [between rows, between columns] in mm.
    pub pixel_spacing: [f64; 2],
    /// Rows.
    pub rows: u32,
    /// Columns.
    pub columns: u32,
    /// Step along the normal the header states, in mm: Spacing Between Slices (0018,0088), else
    /// Slice Thickness (0018,0050), the first that is a positive number (dcm2niix's order).
    /// Only a single slice uses it: it has no neighbour to measure the step from.
    #[serde(default)]
    pub stated_step_mm: Option<f64>,
}

impl FrameGeometry {
    /// Unit slice normal: row direction × column direction.
    pub fn normal(&self) -> [f64; 3] {
        let n = Vector3::from(self.row_direction).cross(&Vector3::from(self.column_direction));
        let norm = n.norm();
        if norm > 0.0 { (n / norm).into() } else { [0.0; 3] }
    }
}

/// Tolerances of the stack checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// Slices closer than this along the normal share a position (mm).
    pub duplicate_mm: f64,
    /// Allowed deviation of a slice step from the median step: the larger of this (mm)…
    pub spacing_abs_mm: f64,
    /// …and this fraction of the median step.
    pub spacing_rel: f64,
    /// Largest angle between the stacking direction and the slice normal (degrees) before the
    /// stack counts as tilted/sheared.
    pub tilt_deg: f64,
    /// Largest difference between direction cosines that still counts as the same orientation.
    pub orientation: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            duplicate_mm: 0.01,
            spacing_abs_mm: 0.01,
            spacing_rel: 0.01,
            tilt_deg: 0.2,
            orientation: 1e-3,
        }
    }
}

/// What is wrong with a stack's geometry.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// No frame was given.
    #[error("no frames: a stack needs at least one")]
    NoFrames,
    /// A single slice whose header states no step along the normal.
    #[error(
        "a single slice needs its step along the normal from Spacing Between Slices (0018,0088) \
         or Slice Thickness (0018,0050), and neither is a positive number of mm"
    )]
    NoSliceStep,
    /// Image Orientation (Patient) is not two orthogonal unit vectors.
    #[error("Image Orientation (Patient) {row:?} / {column:?} is not two orthogonal unit vectors")]
    BadOrientation { row: [f64; 3], column: [f64; 3] },
    /// Pixel Spacing is not positive.
    #[error("Pixel Spacing {spacing:?} must be two positive numbers")]
    BadPixelSpacing { spacing: [f64; 2] },
    /// Frames disagree on orientation, matrix size or pixel spacing.
    #[error("frames differ in {what}: {first} vs {other}")]
    Mixed {
        what: &'static str,
        first: String,
        other: String,
    },
    /// Several frames at one position.
    #[error("{count} slices share the position {position_mm:.3} mm along the normal")]
    DuplicatePosition { position_mm: f64, count: usize },
    /// Missing slices: a step is a whole multiple of the regular step.
    #[error(
        "gap after the slice at {after_mm:.3} mm: step {step_mm:.3} mm where {expected_mm:.3} mm is regular ({missing} slice(s) missing)"
    )]
    Gap {
        after_mm: f64,
        step_mm: f64,
        expected_mm: f64,
        missing: usize,
    },
    /// Steps differ beyond tolerance.
    #[error("non-uniform slice spacing: step {found_mm:.4} mm after {after_mm:.3} mm, median step {expected_mm:.4} mm")]
    UnevenSpacing {
        after_mm: f64,
        found_mm: f64,
        expected_mm: f64,
    },
    /// One slice sits off the line through the first and last slice positions.
    #[error(
        "sheared stack: the slice at {at_mm:.3} mm is {offset_mm:.3} mm off the line through the first and last slices"
    )]
    Sheared { at_mm: f64, offset_mm: f64 },
    /// Slices are not stacked along their normal (gantry tilt or shear).
    #[error("slices are stacked {angle_deg:.2}° off their normal (gantry tilt or sheared stack); limit {limit_deg}°")]
    Tilted { angle_deg: f64, limit_deg: f64 },
}

/// A stack in slice order with its affine.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrderedStack {
    /// Indices into the input frames, from the first slice (voxel k = 0) to the last.
    pub order: Vec<usize>,
    /// Voxel index (i along a row, j down a column, k across slices) → LPS mm. The third
    /// column is the measured step between slice positions, not Slice Thickness; for a single
    /// slice, the normal times the header's stated step ([`FrameGeometry::stated_step_mm`]).
    pub affine: Affine,
    /// Mean step between slices in mm (the stated step for a single slice).
    pub slice_step_mm: f64,
}

/// Orders frames by Image Position (Patient) projected on the slice normal and checks the stack.
/// A single slice is a one-slice stack along its normal, as dcm2niix converts it.
pub fn order_stack(frames: &[FrameGeometry], tol: &Tolerances) -> Result<OrderedStack, StackError> {
    let Some(first) = frames.first() else {
        return Err(StackError::NoFrames);
    };
    check_frame(first)?;
    for f in &frames[1..] {
        check_same_plane(first, f, tol)?;
    }
    let normal = Vector3::from(first.normal());
    if frames.len() == 1 {
        let step_mm = first
            .stated_step_mm
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or(StackError::NoSliceStep)?;
        return Ok(OrderedStack {
            order: vec![0],
            affine: affine(first, first.position, normal * step_mm)?,
            slice_step_mm: step_mm,
        });
    }
    let along = |f: &FrameGeometry| Vector3::from(f.position).dot(&normal);
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.sort_by(|&a, &b| along(&frames[a]).total_cmp(&along(&frames[b])));
    let positions: Vec<f64> = order.iter().map(|&i| along(&frames[i])).collect();

    // Duplicates first: they would otherwise look like a zero step.
    for w in positions.windows(2) {
        if (w[1] - w[0]).abs() < tol.duplicate_mm {
            let count = positions
                .iter()
                .filter(|p| (*p - w[0]).abs() < tol.duplicate_mm)
                .count();
            return Err(StackError::DuplicatePosition {
                position_mm: w[0],
                count,
            });
        }
    }
    let steps: Vec<f64> = positions.windows(2).map(|w| w[1] - w[0]).collect();
    let mut sorted = steps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let allowed = tol.spacing_abs_mm.max(tol.spacing_rel * median);
    for (s, &step) in steps.iter().enumerate() {
        if (step - median).abs() <= allowed {
            continue;
        }
        let ratio = step / median;
        let multiple = ratio.round();
        if multiple >= 2.0 && (step - multiple * median).abs() <= allowed * multiple {
            return Err(StackError::Gap {
                after_mm: positions[s],
                step_mm: step,
                expected_mm: median,
                missing: multiple as usize - 1,
            });
        }
        return Err(StackError::UnevenSpacing {
            after_mm: positions[s],
            found_mm: step,
            expected_mm: median,
        });
    }

    let p0 = Vector3::from(frames[order[0]].position);
    let pn = Vector3::from(frames[order[order.len() - 1]].position);
    let n_steps = (frames.len() - 1) as f64;
    let step = (pn - p0) / n_steps;
    let angle_deg = (step.dot(&normal) / step.norm()).clamp(-1.0, 1.0).acos().to_degrees();
    if angle_deg > tol.tilt_deg {
        return Err(StackError::Tilted {
            angle_deg,
            limit_deg: tol.tilt_deg,
        });
    }
    // Each slice must also sit on the line from first to last (no zig-zag shear).
    for (k, &i) in order.iter().enumerate() {
        let d = Vector3::from(frames[i].position) - (p0 + step * k as f64);
        let offset_mm = (d - normal * d.dot(&normal)).norm();
        if offset_mm > allowed {
            return Err(StackError::Sheared {
                at_mm: positions[k],
                offset_mm,
            });
        }
    }

    Ok(OrderedStack {
        affine: affine(first, p0.into(), step)?,
        order,
        slice_step_mm: step.norm(),
    })
}

/// Voxel index → LPS mm: in-plane axes and pixel spacing from `plane`, voxel 0 at `origin` (LPS
/// mm), each slice `step` (LPS mm) after the one before.
fn affine(plane: &FrameGeometry, origin: [f64; 3], step: Vector3<f64>) -> Result<Affine, StackError> {
    let [dr, dc] = plane.pixel_spacing;
    let step_len = step.norm();
    // Moving along a row crosses columns: the first axis steps by the column spacing.
    let spacing = [dc, dr, step_len];
    let columns = [plane.row_direction, plane.column_direction, (step / step_len).into()];
    Affine::from_parts(spacing, columns, origin).map_err(|_| StackError::BadOrientation {
        row: plane.row_direction,
        column: plane.column_direction,
    })
}

fn check_frame(f: &FrameGeometry) -> Result<(), StackError> {
    let (r, c) = (Vector3::from(f.row_direction), Vector3::from(f.column_direction));
    let unit = |v: &Vector3<f64>| (v.norm() - 1.0).abs() < 1e-3;
    if !(unit(&r) && unit(&c) && r.dot(&c).abs() < 1e-3) || r.iter().chain(c.iter()).any(|v| !v.is_finite()) {
        return Err(StackError::BadOrientation {
            row: f.row_direction,
            column: f.column_direction,
        });
    }
    if !f.pixel_spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(StackError::BadPixelSpacing {
            spacing: f.pixel_spacing,
        });
    }
    Ok(())
}

fn close(x: &[f64], y: &[f64], t: f64) -> bool {
    x.iter().zip(y).all(|(p, q)| (p - q).abs() <= t)
}

/// Whether two frames share Image Orientation (Patient) within `tol.orientation`.
pub fn same_orientation(a: &FrameGeometry, b: &FrameGeometry, tol: &Tolerances) -> bool {
    close(&a.row_direction, &b.row_direction, tol.orientation)
        && close(&a.column_direction, &b.column_direction, tol.orientation)
}

/// Whether two frames share Pixel Spacing (within 1e-4 mm).
pub fn same_pixel_spacing(a: &FrameGeometry, b: &FrameGeometry) -> bool {
    close(&a.pixel_spacing, &b.pixel_spacing, 1e-4)
}

fn check_same_plane(a: &FrameGeometry, b: &FrameGeometry, tol: &Tolerances) -> Result<(), StackError> {
    if !same_orientation(a, b, tol) {
        return Err(StackError::Mixed {
            what: "Image Orientation (Patient)",
            first: format!("{:?}/{:?}", a.row_direction, a.column_direction),
            other: format!("{:?}/{:?}", b.row_direction, b.column_direction),
        });
    }
    if (a.rows, a.columns) != (b.rows, b.columns) {
        return Err(StackError::Mixed {
            what: "Rows/Columns",
            first: format!("{}×{}", a.rows, a.columns),
            other: format!("{}×{}", b.rows, b.columns),
        });
    }
    if !same_pixel_spacing(a, b) {
        return Err(StackError::Mixed {
            what: "Pixel Spacing",
            first: format!("{:?}", a.pixel_spacing),
            other: format!("{:?}", b.pixel_spacing),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axial(z: f64) -> FrameGeometry {
        FrameGeometry {
            position: [-100.0, -120.0, z],
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            pixel_spacing: [0.9, 0.8],
            rows: 256,
            columns: 240,
            stated_step_mm: Some(1.2),
        }
    }

    fn zs(z: &[f64]) -> Vec<FrameGeometry> {
        z.iter().map(|&z| axial(z)).collect()
    }

    #[test]
    fn orders_by_position_not_input_order() {
        let frames = zs(&[3.0, 0.0, 1.5, 4.5, 6.0]);
        let s = order_stack(&frames, &Tolerances::default()).unwrap();
        assert_eq!(s.order, vec![1, 2, 0, 3, 4]);
        let m = s.affine.matrix();
        assert_eq!((m[(0, 0)], m[(1, 1)], m[(2, 2)]), (0.8, 0.9, 1.5));
        assert_eq!(s.affine.origin(), [-100.0, -120.0, 0.0]);
    }

    #[test]
    fn third_column_is_the_measured_step_towards_the_last_slice() {
        // Sagittal: normal = row × column = (0,1,0) × (0,0,−1) = (−1,0,0). Sorted along the
        // normal, the first slice is the one at x = 3.6 and the step is 1.2 mm towards −x.
        let frames: Vec<_> = (0..4)
            .map(|k| FrameGeometry {
                position: [k as f64 * 1.2, -100.0, 80.0],
                row_direction: [0.0, 1.0, 0.0],
                column_direction: [0.0, 0.0, -1.0],
                pixel_spacing: [1.0, 1.0],
                rows: 10,
                columns: 10,
                stated_step_mm: None,
            })
            .collect();
        let s = order_stack(&frames, &Tolerances::default()).unwrap();
        assert_eq!(s.order, vec![3, 2, 1, 0]);
        let col = s.affine.matrix().column(2);
        assert!((col[0] + 1.2).abs() < 1e-12 && col[1].abs() < 1e-12, "{col}");
        assert!((s.affine.origin()[0] - 3.6).abs() < 1e-12);
    }

    #[test]
    fn a_single_slice_steps_along_its_normal_by_the_stated_step() {
        // Coronal: normal = row × column = (1,0,0) × (0,0,−1) = (0,1,0).
        let frame = FrameGeometry {
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 0.0, -1.0],
            ..axial(7.0)
        };
        let s = order_stack(&[frame], &Tolerances::default()).unwrap();
        assert_eq!((s.order, s.slice_step_mm), (vec![0], 1.2));
        let col = s.affine.matrix().column(2);
        assert_eq!([col[0], col[1], col[2]], [0.0, 1.2, 0.0]);
        assert_eq!(s.affine.spacing(), [0.8, 0.9, 1.2]);
        assert_eq!(s.affine.origin(), [-100.0, -120.0, 7.0]);
    }

    #[test]
    fn stack_errors() {
        let t = Tolerances::default();
        let err = |frames: Vec<FrameGeometry>| order_stack(&frames, &t).unwrap_err();
        assert_eq!(err(Vec::new()), StackError::NoFrames);
        for stated in [None, Some(0.0), Some(-1.0), Some(f64::NAN)] {
            let mut single = zs(&[1.0]);
            single[0].stated_step_mm = stated;
            assert_eq!(err(single), StackError::NoSliceStep, "{stated:?}");
        }
        assert!(matches!(
            err(zs(&[0.0, 1.0, 1.0, 2.0])),
            StackError::DuplicatePosition { count: 2, .. }
        ));
        assert!(matches!(
            err(zs(&[0.0, 1.0, 2.0, 4.0, 5.0])),
            StackError::Gap { missing: 1, .. }
        ));
        assert!(matches!(
            err(zs(&[0.0, 1.0, 2.0, 3.5, 4.5])),
            StackError::UnevenSpacing { .. }
        ));
        let mut tilted = zs(&[0.0, 1.0, 2.0, 3.0]);
        for (k, f) in tilted.iter_mut().enumerate() {
            f.position[1] += 0.2 * k as f64; // 11° gantry tilt
        }
        assert!(matches!(err(tilted), StackError::Tilted { .. }));
        let mut zigzag = zs(&[0.0, 1.0, 2.0, 3.0]);
        zigzag[1].position[0] += 0.5;
        assert!(matches!(err(zigzag), StackError::Sheared { .. }));
        let mut mixed = zs(&[0.0, 1.0, 2.0]);
        mixed[1].rows = 128;
        assert!(matches!(
            err(mixed),
            StackError::Mixed {
                what: "Rows/Columns",
                ..
            }
        ));
        let mut skew = zs(&[0.0, 1.0]);
        skew[0].column_direction = [0.1, 1.0, 0.0];
        skew[1].column_direction = [0.1, 1.0, 0.0];
        assert!(matches!(err(skew), StackError::BadOrientation { .. }));
        let mut spacing = zs(&[0.0, 1.0]);
        spacing[0].pixel_spacing = [0.0, 1.0];
        assert!(matches!(err(spacing), StackError::BadPixelSpacing { .. }));
    }

    #[test]
    fn rounding_in_positions_is_tolerated() {
        let frames = zs(&[0.0, 1.00004, 1.99998, 3.00003]);
        let s = order_stack(&frames, &Tolerances::default()).unwrap();
        assert!((s.slice_step_mm - 1.00001).abs() < 1e-4);
    }
}
