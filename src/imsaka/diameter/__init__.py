"""imsaka.diameter"""
